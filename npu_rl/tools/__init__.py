"""Data and asset tools, installed with the package and run as console scripts.

| command | module | what |
|---|---|---|
| `npu-rl-preprocess-math` | `preprocess_math` | MATH-lighteval download -> verl-schema parquet |
| `npu-rl-preprocess-gsm8k` | `preprocess_gsm8k` | GSM8K download -> verl-schema parquet |
| `npu-rl-preprocess-benchmarks` | `preprocess_benchmarks` | benchmark downloads -> one parquet each (eval suite) |
| `npu-rl-opencompass-config` | `opencompass_config` | OpenCompass model config for a merged folder |
| `npu-rl-parquet2json` | `parquet2json` | parquet -> OpenCompass math.json |
| `npu-rl-plot` | `plot_metrics` | training curves of one or several runs (needs the `plot` extra) |
| `npu-rl-make-synthetic-math` | `make_synthetic_math` | the offline demo's synthetic arithmetic data |
| `npu-rl-make-tiny-model` | `make_tiny_model` | the offline demo's pre-trained tiny base model |

Each is also `python -m npu_rl.tools.<module>`.
"""
