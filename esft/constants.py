"""File names and schema versions of every artifact the library writes (named once, here)."""

ADAPTER_CONFIG_NAME = "adapter_config.json"
ADAPTER_WEIGHTS_NAME = "adapter_model.safetensors"
EXPERT_CONFIG_SCHEMA = "esft.expert_config/1"
SCORES_SCHEMA = "esft.expert_scores/1"
ADAPTER_SCHEMA = "esft.adapter/1"
CHECKPOINT_SCHEMA = "esft.checkpoint/2"  # 2: run_config names the method ("method"), not only "experts"

CHECKPOINTS_DIR = "checkpoints"
CHECKPOINT_STATE_NAME = "trainer_state.json"
CHECKPOINT_TENSORS_NAME = "trainer_state.safetensors"
METRICS_NAME = "metrics.jsonl"
TRAIN_REPORT_NAME = "train_report.json"
FFT_CONFIG_NAME = "fft_config.json"  # beside a fully fine-tuned model: the method config and training metadata

DEFAULT_TOP_P = {"token": 0.2, "gate": 0.1}
DEFAULT_N_SAMPLE_TOKENS = 131072
IGNORE_INDEX = -100
