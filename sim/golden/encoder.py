"""Post-norm encoder layer, as KWT-1 (docs/numerics.md §14)."""

from .attention import linear_mha, mha
from .fixed import INT8, INT9, INT16
from .ffn import ffn
from .layernorm import layernorm
from .mac import matmul
from .requant import add, requant

__all__ = ["encoder_layer"]


def encoder_layer(x, layer, heads, trace=None):
    """One layer on int9 tokens ``x`` (..., N, dim) with :class:`sim.qmodel.QLayer` ``layer``.

    ``trace`` (a dict) receives every integer intermediate under the float model's names.
    """
    dim = x.shape[-1]
    acc = matmul(x, layer.wqkv.T)
    # q is an A operand (int9; int8 for the φ table of linear attention); k and v are B
    # operands (int8).
    q = requant(acc[..., :dim], layer.m_qkv[:dim], layer.sh_qkv[:dim],
                *(INT8 if layer.linear else INT9))
    kv = requant(acc[..., dim:], layer.m_qkv[dim:], layer.sh_qkv[dim:], *INT8)
    k, v = kv[..., :dim], kv[..., dim:]
    att = {} if trace is not None else None
    if layer.linear:
        a = linear_mha(q, k, v, heads, layer.phi_q, layer.phi_k, layer.m_t, layer.sh_t, layer.m_l,
                       layer.sh_l)
    else:
        a = mha(q, k, v, heads, layer.c_e, layer.sh_e, layer.m_a, layer.sh_a, att)
    o = requant(matmul(a, layer.wo.T, layer.bo), layer.m_o, layer.sh_o, *INT16)
    h1 = add(o, x, layer.m_r1, layer.sh_r1, *INT16)
    x1 = layernorm(h1, **layer.ln1, lo=INT9[0], hi=INT9[1])
    f = {} if trace is not None else None
    f2 = ffn(x1, layer.w1, layer.b1, layer.m_1, layer.sh_1, layer.gelu, layer.w2, layer.b2,
             layer.m_2, layer.sh_2, INT16, f)
    h2 = add(f2, x1, layer.m_r2, layer.sh_r2, *INT16)
    x2 = layernorm(h2, **layer.ln2, lo=INT9[0], hi=INT9[1])
    if trace is not None:
        trace.update(q=q, k=k, v=v, attn=a, o=o, h1=h1, x1=x1, h2=h2, x2=x2, **att, **f)
    return x2
