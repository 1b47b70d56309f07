"""jaxops: Caffe2's sequence, top-k, masking and scope operators as pure JAX functions."""

from jaxops._src.attention import PackedRows as PackedRows
from jaxops._src.attention import attention_mask as attention_mask
from jaxops._src.attention import length_mask as length_mask
from jaxops._src.attention import pack_sequences as pack_sequences
from jaxops._src.attention import unpack_sequences as unpack_sequences
from jaxops._src.broadcast import expand as expand
from jaxops._src.broadcast import expand_gradient as expand_gradient
from jaxops._src.checkpoint import load_checkpoint as load_checkpoint
from jaxops._src.checkpoint import load_scope as load_scope
from jaxops._src.checkpoint import save_checkpoint as save_checkpoint
from jaxops._src.checkpoint import save_scope as save_scope
from jaxops._src.checks import checked as checked
from jaxops._src.checks import unchecked as unchecked
from jaxops._src.masking import Masked as Masked
from jaxops._src.masking import boolean_mask as boolean_mask
from jaxops._src.masking import boolean_mask_gradient as boolean_mask_gradient
from jaxops._src.masking import boolean_mask_lengths as boolean_mask_lengths
from jaxops._src.masking import boolean_unmask as boolean_unmask
from jaxops._src.masking import safe_softmax as safe_softmax
from jaxops._src.masking import sequence_mask as sequence_mask
from jaxops._src.ragged import Ragged as Ragged
from jaxops._src.ragged import lengths_range_fill as lengths_range_fill
from jaxops._src.ragged import lengths_to_offsets as lengths_to_offsets
from jaxops._src.ragged import lengths_to_segment_ids as lengths_to_segment_ids
from jaxops._src.ragged import segment_ids_to_lengths as segment_ids_to_lengths
from jaxops._src.ragged import segment_softmax as segment_softmax
from jaxops._src.ragged import segment_top_k as segment_top_k
from jaxops._src.scope import Scope as Scope
from jaxops._src.scope import WorkspaceStack as WorkspaceStack
from jaxops._src.scope import check_bindings_match as check_bindings_match
from jaxops._src.scope import create_scope as create_scope
from jaxops._src.scope import do as do
from jaxops._src.scope import has_scope as has_scope
from jaxops._src.sequence import pack_rnn_sequence as pack_rnn_sequence
from jaxops._src.sequence import unpack_rnn_sequence as unpack_rnn_sequence
from jaxops._src.sharding import ShardedRagged as ShardedRagged
from jaxops._src.sharding import shard_ragged as shard_ragged
from jaxops._src.topk import TopK as TopK
from jaxops._src.topk import lengths_top_k as lengths_top_k
from jaxops._src.topk import lengths_top_k_gradient as lengths_top_k_gradient

__version__ = "0.3.0"

__all__ = [
    "Masked",
    "PackedRows",
    "Ragged",
    "Scope",
    "ShardedRagged",
    "TopK",
    "WorkspaceStack",
    "attention_mask",
    "boolean_mask",
    "boolean_mask_gradient",
    "boolean_mask_lengths",
    "boolean_unmask",
    "check_bindings_match",
    "checked",
    "create_scope",
    "do",
    "expand",
    "expand_gradient",
    "has_scope",
    "length_mask",
    "lengths_range_fill",
    "lengths_to_offsets",
    "lengths_to_segment_ids",
    "lengths_top_k",
    "lengths_top_k_gradient",
    "load_checkpoint",
    "load_scope",
    "pack_rnn_sequence",
    "pack_sequences",
    "safe_softmax",
    "save_checkpoint",
    "save_scope",
    "segment_ids_to_lengths",
    "segment_softmax",
    "segment_top_k",
    "sequence_mask",
    "shard_ragged",
    "unchecked",
    "unpack_rnn_sequence",
    "unpack_sequences",
]
