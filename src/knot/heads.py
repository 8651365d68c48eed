"""Heads trained over frozen-encoder features (see :mod:`knot.features`).

- :class:`TokenHead`: KNOT's head over cached token states, the same layers as
  :class:`knot.models.KnotClassifier`'s head (``norm``, ``mixer``, ``dropout``,
  ``classifier``, under the same attribute names, so a classifier's head weights load
  into it with :meth:`TokenHead.load_from_classifier`).
- :class:`PooledHead`: a mean-pooled sentence embedding through a small MLP, the
  fastest frozen mode.

Both take ``forward(features, feature_mask=None) -> logits (B, K)``.

>>> import torch
>>> head = PooledHead(hidden=8, num_labels=3, units=16)
>>> head(torch.randn(4, 8)).shape
torch.Size([4, 3])
>>> tok = TokenHead(hidden=8, num_labels=3, heads=2)
>>> tok(torch.randn(4, 5, 8), torch.ones(4, 5, dtype=torch.long)).shape
torch.Size([4, 3])
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

__all__ = ["TokenHead", "PooledHead", "HEAD_PREFIXES", "knot_head_layers"]

#: Parameter-name prefixes of KNOT's head inside ``KnotClassifier``'s state_dict.
HEAD_PREFIXES = ("norm.", "mixer.", "classifier.")


def knot_head_layers(
    hidden: int, num_labels: int, heads: int, dropout: float
) -> tuple[nn.LayerNorm, nn.TransformerEncoderLayer, nn.Dropout, nn.Linear]:
    """The layers of KNOT's head, created in this order (so a seeded initialisation is the
    same wherever they are built): LayerNorm, one ``TransformerEncoderLayer`` (feed-forward
    4H, batch first), dropout, and the linear classifier. :class:`TokenHead` and
    :class:`knot.models.KnotClassifier` both hold them under the names ``norm``, ``mixer``,
    ``dropout`` and ``classifier``, so their weights are interchangeable.
    """
    norm = nn.LayerNorm(hidden)
    mixer = nn.TransformerEncoderLayer(
        d_model=hidden, nhead=heads, dim_feedforward=4 * hidden, dropout=dropout, batch_first=True
    )
    return norm, mixer, nn.Dropout(dropout), nn.Linear(hidden, num_labels)


class TokenHead(nn.Module):
    """KNOT's head: LayerNorm -> one ``TransformerEncoderLayer`` (padding masked) ->
    dropout -> linear on the first token.

    Its input is what :class:`~knot.models.KnotClassifier` computes before its
    LayerNorm: the encoder's last hidden state plus its embedding-layer output, which
    the ``"tokens"`` feature cache stores per real token.

    Parameters
    ----------
    hidden : int
        Hidden size H of the features.
    num_labels : int
        K.
    heads : int
        Attention heads of the mixer layer (must divide ``hidden``).
    dropout : float
    """

    def __init__(self, hidden: int, num_labels: int, *, heads: int = 2, dropout: float = 0.1) -> None:
        super().__init__()
        if hidden % heads:
            raise ValueError(f"model.head_heads: {heads} does not divide the hidden size {hidden}")
        self.hidden = int(hidden)
        self.num_labels = int(num_labels)
        self.norm, self.mixer, self.dropout, self.classifier = knot_head_layers(hidden, num_labels, heads, dropout)

    def forward(self, features: torch.Tensor, feature_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Logits for a padded batch of token states.

        Parameters
        ----------
        features : Tensor (B, L, H)
            Last hidden state + embedding output; position 0 is the first token ([CLS]).
        feature_mask : Tensor (B, L), optional
            1 for real tokens, 0 for padding; default: no padding.

        Returns
        -------
        Tensor (B, K)
        """
        h = self.norm(features)  # (B, L, H)
        pad = None if feature_mask is None else feature_mask == 0  # (B, L) True at padding
        return self.classifier(self.dropout(self.first_token(h, pad)))  # (B, K)

    def first_token(self, h: torch.Tensor, pad: torch.Tensor | None = None) -> torch.Tensor:
        """``self.mixer(h, src_key_padding_mask=pad)[:, 0]`` computed for position 0 only.

        The classifier reads the first position alone, and in a transformer layer that
        position depends on the others only through attention's keys and values. So the
        query, the residuals, both LayerNorms and the feed-forward block are evaluated
        at position 0 alone: the same function (the same weights; in eval mode the same
        output up to float rounding, in training the same distribution, only dropout's
        random draws differ), at about a sixth of the full layer's cost.

        Parameters
        ----------
        h : Tensor (B, L, H), normalised token states
        pad : BoolTensor (B, L), optional, True at padding

        Returns
        -------
        Tensor (B, H)
        """
        m = self.mixer
        q = h[:, :1]  # (B, 1, H)

        def attend(x: torch.Tensor, kv: torch.Tensor) -> torch.Tensor:
            out = m.self_attn(x, kv, kv, key_padding_mask=pad, need_weights=False)[0]  # (B, 1, H)
            return m.dropout1(out)

        def feed_forward(x: torch.Tensor) -> torch.Tensor:
            return m.dropout2(m.linear2(m.dropout(m.activation(m.linear1(x)))))  # (B, 1, H)

        if m.norm_first:
            kv = m.norm1(h)  # (B, L, H)
            x = q + attend(kv[:, :1], kv)
            x = x + feed_forward(m.norm2(x))
        else:
            x = m.norm1(q + attend(q, h))
            x = m.norm2(x + feed_forward(x))
        return x[:, 0]  # (B, H)

    def load_from_classifier(self, model: Any) -> "TokenHead":
        """Copy a ``KnotClassifier``'s head weights (``norm``, ``mixer``, ``classifier``)."""
        state = {k: v for k, v in model.state_dict().items() if k.startswith(HEAD_PREFIXES)}
        self.load_state_dict(state)
        return self


class PooledHead(nn.Module):
    """Mean-pooled sentence embedding -> dropout -> Linear -> GELU -> dropout -> Linear.

    Parameters
    ----------
    hidden : int
        Embedding size H.
    num_labels : int
        K.
    units : int
        Width of the hidden layer.
    dropout : float
    """

    def __init__(self, hidden: int, num_labels: int, *, units: int = 256, dropout: float = 0.1) -> None:
        super().__init__()
        self.hidden = int(hidden)
        self.num_labels = int(num_labels)
        self.net = nn.Sequential(
            nn.Dropout(dropout),
            nn.Linear(hidden, units),
            nn.GELU(),
            nn.Dropout(dropout),
            nn.Linear(units, num_labels),
        )

    def forward(self, features: torch.Tensor, feature_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Logits from sentence embeddings.

        Parameters
        ----------
        features : Tensor (B, H)
        feature_mask : ignored (kept so both heads share one signature)

        Returns
        -------
        Tensor (B, K)
        """
        return self.net(features)  # (B, K)
