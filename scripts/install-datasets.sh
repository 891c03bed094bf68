#!/bin/sh
# Install the real datasets the pipeline can read offline (Debian packages), where this machine can.
#
#   dataset-fashion-mnist -> /usr/share/datasets/fashion-mnist/*-idx?-ubyte.gz  (data.source: fashion_mnist)
#
# Runs apt-get only as root with apt available; otherwise prints the command to run. Never fails
# the caller: the tests that need a dataset skip with a reason when it is absent, and the embedded
# digits stay the default source.
PACKAGES="dataset-fashion-mnist"
DIR=/usr/share/datasets/fashion-mnist

if [ -f "$DIR/train-images-idx3-ubyte.gz" ]; then
    echo "install-datasets: Fashion-MNIST already present in $DIR"
    exit 0
fi
if [ "$(id -u)" = "0" ] && command -v apt-get >/dev/null 2>&1; then
    echo "install-datasets: apt-get install -y $PACKAGES"
    if ! DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends $PACKAGES; then
        echo "install-datasets: install failed; trying once more after apt-get update"
        apt-get update >/dev/null 2>&1 || true
        DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends $PACKAGES \
            || echo "install-datasets: WARNING: could not install $PACKAGES; fashion_mnist tests will skip"
    fi
else
    echo "install-datasets: not root or no apt-get; to install Fashion-MNIST run:"
    echo "    sudo apt-get install -y $PACKAGES"
    echo "or download the four idx .gz files and set data.source_path to their directory."
fi
exit 0
