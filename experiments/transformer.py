"""A small pre-LN decoder-only transformer over characters (Flax linen), blocks scanned.

For tokens ``c_1..c_T`` (``T`` at most ``context``) the model computes

    h_0 = E[c_t] + P[t]                               token + learned position embedding
    a   = h + Attention(LN(h))                         causal multi-head self-attention
    h'  = a + W_2 GELU(W_1 LN(a))                      MLP of width ``mlp_ratio * width``
    logits_t = W_out LN_f(h_L)_t + b_out                (one block shown; ``blocks`` of them)

(Radford et al. 2019's ordering: each sublayer reads a layer-normalised copy of the residual
stream and adds its output back, with a final LayerNorm before the output projection.)
Position ``t`` attends to positions ``<= t`` only, so the logits at ``t`` depend on
``c_1..c_t`` alone.

The blocks are one ``nn.scan`` over a ``Block``: their parameters are stacked on a leading
axis of length ``blocks`` under ``blocks/...`` and applied with ``jax.lax.scan``, so
``stacked="blocks"`` gives every block's slice of every sublayer (``blocks/ln_attention``,
``blocks/attention/query``, ``key``, ``value``, ``out``, ``blocks/ln_mlp``,
``blocks/mlp_in``, ``blocks/mlp_out``) a factor of its own. Embeddings are initialised
``N(0, 0.02^2)`` (as GPT-2), dense layers with Flax's defaults (LeCun normal, zero bias).

References:
  Vaswani et al., "Attention Is All You Need", NeurIPS 2017.
  Radford et al., "Language Models are Unsupervised Multitask Learners", 2019 (pre-LN GPT-2).
  Xiong et al., "On Layer Normalization in the Transformer Architecture", ICML 2020.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

embedding_init = nn.initializers.normal(0.02)


class Block(nn.Module):
  """LN -> causal self-attention -> residual, LN -> MLP (GELU) -> residual."""

  width: int
  heads: int
  mlp_ratio: int = 4

  @nn.compact
  def __call__(self, stream: jax.Array, _) -> tuple[jax.Array, None]:
    causal = nn.make_causal_mask(jnp.ones(stream.shape[:2], bool))
    attended = nn.MultiHeadDotProductAttention(self.heads, name="attention")(
        nn.LayerNorm(name="ln_attention")(stream), mask=causal)
    stream = stream + attended
    hidden = nn.gelu(nn.Dense(self.mlp_ratio * self.width, name="mlp_in")(
        nn.LayerNorm(name="ln_mlp")(stream)))
    return stream + nn.Dense(self.width, name="mlp_out")(hidden), None


class CharTransformer(nn.Module):
  """Tokens (batch, T) -> next-character logits (batch, T, vocab)."""

  vocab: int
  context: int = 64
  width: int = 64
  heads: int = 4
  blocks: int = 4
  mlp_ratio: int = 4

  @nn.compact
  def __call__(self, tokens: jax.Array, train: bool = False) -> jax.Array:
    del train  # no dropout; taken so that every model of the registry is called alike
    positions = jnp.arange(tokens.shape[-1])
    stream = (nn.Embed(self.vocab, self.width, embedding_init=embedding_init,
                       name="token_embed")(tokens)
              + nn.Embed(self.context, self.width, embedding_init=embedding_init,
                         name="position_embed")(positions))
    scanned = nn.scan(Block, variable_axes={"params": 0}, split_rngs={"params": True},
                      length=self.blocks)
    stream, _ = scanned(self.width, self.heads, self.mlp_ratio, name="blocks")(stream, None)
    return nn.Dense(self.vocab, name="head")(nn.LayerNorm(name="ln_final")(stream))
