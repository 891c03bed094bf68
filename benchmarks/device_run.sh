#!/bin/sh
# The one command for a lent GPU machine (README "Benchmarks"): select the fashion_mnist/resnet18 profile on a
# validation split, then run the device check's three parts with what was selected. At most about 8 minutes.
#   here:   make device-prep                      (copies the Fashion-MNIST idx files into the ignored .device/)
#   device: sh benchmarks/device_run.sh "$OUT"    (carry: .device; time limit 600 s)
# Results land in $OUT: hparams_fashion_mnist_resnet18.{md,json}, params.selected.yaml, device_check_cuda.{md,json,png}.
# python3: the device machine's interpreter with PyTorch (it has no `python`); PYTHON overrides it.
set -u
out=${1:?usage: sh benchmarks/device_run.sh OUT_DIR}
py=${PYTHON:-python3}
export PYTHONUNBUFFERED=1
data=.device/fashion-mnist
[ -f "$data/train-images-idx3-ubyte.gz" ] || { echo "device_run: $data is missing: run 'make device-prep' and carry .device" >&2; exit 2; }
"$py" -c 'import sys, torch; print("device_run:", sys.version.split()[0], "torch", torch.__version__, "cuda", torch.cuda.is_available())'
# The sweep's failure leaves the table to params.yaml's profile (device_check says so in its report), never no table.
"$py" benchmarks/select_hparams.py --device cuda --dataset fashion_mnist --model resnet18 --pad-rgb --augment \
    --lr 0.1 --tuning-size 10000 --epochs 20 --grid-preset wide --budget-s 140 --data-path "$data" \
    --out-dir "$out" --write-params "$out/params.selected.yaml" || echo "device_run: the sweep failed (exit $?)" >&2
"$py" benchmarks/device_check.py --params "$out/params.selected.yaml" --budget-s 270 --data-path "$data" --out-dir "$out"
