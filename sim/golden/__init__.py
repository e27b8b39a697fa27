"""Bit-exact numpy golden model of the accelerator (docs/numerics.md).

One function per hardware unit (``mac``, ``requant``, ``add``, ``reduce_sum``/``reduce_max``,
``exp``, ``divide``, ``rsqrt``, ``activation``, ``delta_encode``) and one per operation
(``matmul``, ``softmax``, ``layernorm``, ...).
"""
from .activation import activation, activation_lut, elu1, elu1_lut, gelu_lut, gelu_tanh, relu
from .delta import delta_encode
from .divide import divide
from .exp import EXP_LUT, exp
from .fixed import INT8, INT9, INT16, INT32, UINT8, clip, round_half_up, rshift_round
from .layernorm import layernorm, layernorm_constants
from .mac import MAX_K, mac, matmul, wrap32
from .reduce import reduce_max, reduce_sum
from .requant import add, encode_multiplier, requant
from .rsqrt import RSQRT_LUT, rsqrt
from .softmax import P_ONE, exp_weights, softmax, softmax_constants
from .attention import attention, linear_attention, linear_mha, mha
from .encoder import encoder_layer
from .ffn import ffn
from .kwt import embed, kwt

__all__ = [
    "activation",
    "activation_lut",
    "elu1",
    "elu1_lut",
    "gelu_lut",
    "gelu_tanh",
    "relu",
    "delta_encode",
    "divide",
    "EXP_LUT",
    "exp",
    "INT8",
    "INT9",
    "INT16",
    "INT32",
    "UINT8",
    "clip",
    "round_half_up",
    "rshift_round",
    "layernorm",
    "layernorm_constants",
    "MAX_K",
    "mac",
    "matmul",
    "wrap32",
    "reduce_max",
    "reduce_sum",
    "add",
    "encode_multiplier",
    "requant",
    "RSQRT_LUT",
    "rsqrt",
    "P_ONE",
    "exp_weights",
    "softmax",
    "softmax_constants",
    "attention",
    "linear_attention",
    "linear_mha",
    "mha",
    "encoder_layer",
    "ffn",
    "embed",
    "kwt",
]
