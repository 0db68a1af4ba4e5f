# nemo_gradalign on top of NVIDIA's NeMo RL container. Build and push:
#   docker build --build-arg NEMO_RL_TAG=v0.6.0 -t <registry>/nemo-rl-gradalign:v0.6.0 .
#   docker push <registry>/nemo-rl-gradalign:v0.6.0
# then name that image as `container_image` in launcher/clusters/<your cluster>.yaml.
ARG NEMO_RL_TAG=v0.6.0
FROM nvcr.io/nvidia/nemo-rl:${NEMO_RL_TAG}

COPY . /opt/nemo_gradalign
# --no-deps: keep the container's torch, megatron-core, vLLM and Transformer Engine exactly as they
# are; the pure-Python dependencies (pydantic, omegaconf, hydra, datasets, rich) are already there.
RUN pip install --no-deps --no-cache-dir -e /opt/nemo_gradalign
# Ray's worker processes inherit PYTHONPATH: the GradAlign worker extension imports from here.
ENV PYTHONPATH=/opt/nemo_gradalign:${PYTHONPATH}
WORKDIR /opt/nemo-rl
