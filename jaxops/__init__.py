"""jaxops: Caffe2's sequence, top-k, masking and scope operators as pure JAX functions."""

from jaxops._src.broadcast import expand as expand
from jaxops._src.broadcast import expand_gradient as expand_gradient
from jaxops._src.checks import checked as checked
from jaxops._src.sequence import pack_rnn_sequence as pack_rnn_sequence
from jaxops._src.sequence import unpack_rnn_sequence as unpack_rnn_sequence

__version__ = "0.1.0"

__all__ = [
    "checked",
    "expand",
    "expand_gradient",
    "pack_rnn_sequence",
    "unpack_rnn_sequence",
]
