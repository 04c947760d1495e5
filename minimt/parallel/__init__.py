"""minimt.parallel: processes and process groups (launch, ParallelContext), the communication
primitives (comm, and the ring algorithm in ring), Megatron's autograd mappings f and g
(mappings), its tensor-parallel layers (tensor,
cross_entropy), pipeline schedules with their runtime (pipeline, pipeline_runtime), data
parallelism and ZeRO-1 (data_parallel, zero), ZeRO-2/3 (fsdp), checkpoints that change layout
(checkpoint), and a rank's share of the model on the mesh with mesh-wide gradient checks (layout, grads)."""
from .comm import (
    CommCounter,
    CommRecord,
    all_gather,
    all_reduce,
    all_reduce_async,
    barrier,
    broadcast,
    exchange,
    isend,
    recv,
    recv_backward,
    recv_forward,
    reduce_scatter,
    ring_bytes_per_rank,
    send,
    send_backward,
    send_backward_recv_forward,
    send_forward,
    send_forward_recv_backward,
)
from .mappings import (copy_to_tensor_model_parallel_region,
                       gather_from_tensor_model_parallel_region,
                       reduce_from_tensor_model_parallel_region,
                       scatter_to_tensor_model_parallel_region)
from .context import ParallelContext, divide, ensure_divisibility, mesh_ranks, rank_coords
from .launch import LaunchTimeout, RankError, launch
from .pipeline import (SCHEDULES, Action, ScheduleDeadlockError, ScheduleError, Timeline,
                       bubble_fraction, bubble_time_ratio, num_warmup_microbatches,
                       peak_in_flight, pipeline_schedule, simulate, validate_schedule)
from .pipeline_runtime import (ActionCost, GPTStage, StepRecord, build_stages, pipeline_step,
                               stage_parameters,
                               stage_layers, sync_tied_grads,
                               timeline_from_records)
from .cross_entropy import vocab_parallel_cross_entropy
from .tensor import (ColumnParallelLinear, RowParallelLinear, VocabParallelEmbedding,
                     VocabParallelLMHead, apply_tensor_parallel, gather_vocab_parallel_logits)
from .ring import ring_all_gather, ring_all_reduce, ring_reduce_scatter
from .data_parallel import DistributedDataParallel, unique_parameters
from .zero import DistributedOptimizer
from .fsdp import FullyShardedDataParallel
from .sharded_adamw import ShardedAdamW
from .checkpoint import (checkpoint_to_hf_gpt2_state_dict, full_state_dict, load_checkpoint,
                         load_serial_model, read_checkpoint, save_checkpoint)
from .mesh import bytes_per_step, rank_holdings, stage_numel
from .grads import MeshGradients
from .layout import MeshModel, check_layout
