#!/bin/sh
# The one command for a lent GPU machine (README "Benchmarks"): select the fashion_mnist/resnet18 profile on a
# validation split, then run the device check's three parts with what was selected. About 7.5 minutes in all.
#   here:   make device-prep                      (copies the Fashion-MNIST idx files into the ignored .device/)
#   device: sh benchmarks/device_run.sh "$OUT"    (carry: .device; time limit 600 s)
# Results land in $OUT: hparams_fashion_mnist_resnet18.{md,json}, params.selected.yaml, device_check_cuda.{md,json,png}.
# python3: the device machine's interpreter with PyTorch (it has no `python`); PYTHON overrides it.
#
# Time: the scripts' --budget-s only stops them STARTING work (a sweep point, a table repetition), so the clock is
# kept here. The sweep is killed at SWEEP_CAP_S if it runs on (it rewrites its log and params copy after every
# method, so what it finished stands); the device check gets what is left of TOTAL_S. The check writes its report
# after every part and every finished method of every repetition, so a run stopped by the device's limit keeps
# the parts and rows it finished (no table rows while the first repetition's models still train).
set -u
out=${1:?usage: sh benchmarks/device_run.sh OUT_DIR}
py=${PYTHON:-python3}
total=${TOTAL_S:-450}        # the whole run's aim (the device allows 600 s; the guide asks for <= 8 minutes)
hard_total=${HARD_TOTAL_S:-480}  # the device check is stopped when the whole run reaches this (8 minutes)
floor=${MIN_CHECK_S:-150}    # the device check's least budget, whatever the sweep used
sweep_budget=${SWEEP_BUDGET_S:-140}
sweep_cap=${SWEEP_CAP_S:-190}
export PYTHONUNBUFFERED=1
data=.device/fashion-mnist
[ -f "$data/train-images-idx3-ubyte.gz" ] || { echo "device_run: $data is missing: run 'make device-prep' and carry .device" >&2; exit 2; }
now() { t=$(date +%s 2>/dev/null); case $t in ''|*[!0-9]*) echo "";; *) echo "$t";; esac; }
start=$(now)
"$py" -c 'import sys, torch; print("device_run:", sys.version.split()[0], "torch", torch.__version__, "cuda", torch.cuda.is_available())'
cap=""
if timeout -k 1 5 true >/dev/null 2>&1; then
    cap="timeout -k 5 $sweep_cap"
else
    echo "device_run: no usable timeout command: the sweep runs without its ${sweep_cap} s cap" >&2
fi
# The sweep's failure leaves the table to params.yaml's profile (device_check says so in its report), never no table.
# shellcheck disable=SC2086  # $cap is empty or "timeout -k 5 N": word splitting is wanted
$cap "$py" benchmarks/select_hparams.py --device cuda --dataset fashion_mnist --model resnet18 --pad-rgb --augment \
    --lr 0.1 --tuning-size 10000 --epochs 20 --grid-preset wide --budget-s "$sweep_budget" --data-path "$data" \
    --out-dir "$out" --write-params "$out/params.selected.yaml" || echo "device_run: the sweep failed or was stopped (exit $?)" >&2
end=$(now)
if [ -n "$start" ] && [ -n "$end" ]; then
    used=$((end - start))
else  # no clock: assume the sweep used its whole cap
    used=$sweep_cap
    echo "device_run: date gave no time; assuming the sweep used ${sweep_cap} s" >&2
fi
left=$((total - used))
[ "$left" -gt "$total" ] && left=$total  # a clock stepped backwards
[ "$left" -lt "$floor" ] && left=$floor
# The check's --budget-s only keeps it from starting a repetition it cannot finish; its first repetition always
# runs, so it is also stopped when the run reaches HARD_TOTAL_S (never before its budget). It writes its report
# after every part and every finished method, so the stop keeps what it finished (a review of 2026-12-07 estimated
# 450-550 s for the whole run on an H100, past the 8 minutes the guide allows).
hard=$((hard_total - used))
[ "$hard" -gt "$hard_total" ] && hard=$hard_total  # a clock stepped backwards
[ "$hard" -lt "$left" ] && hard=$left
check_cap=""
[ -n "$cap" ] && check_cap="timeout -k 10 $hard"
echo "device_run: $used s used; the device check gets --budget-s $left${check_cap:+ and is stopped after $hard s}"
# --table-epochs 20: the table's originals, retrains and references train as long as the sweep's did, so the
# values it selected are tested on the kind of model they were selected for.
# shellcheck disable=SC2086  # $check_cap is empty or "timeout -k 10 N"
$check_cap "$py" benchmarks/device_check.py --params "$out/params.selected.yaml" --budget-s "$left" --table-epochs 20 \
    --data-path "$data" --out-dir "$out" || { code=$?; echo "device_run: the device check failed or was stopped (exit $code)" >&2; exit "$code"; }
