# SageMaker AI container for live captions on a GPU: vLLM (Voxtral Realtime) behind the bridge.
#
#   docker build -t live-captions:gpu .
#
# Base: the newest SageMaker vLLM DLC found with a published tag, vLLM 0.30.0 (/v1/realtime exists
# since vLLM 0.16). The same tag is in the regional DLC registry
# (763104351884.dkr.ecr.<region>.amazonaws.com/vllm:...); the AWS reference used
# vllm:0.17.1-gpu-py312-cu129-ubuntu22.04-sagemaker-v1.0-soci. Override with --build-arg BASE_IMAGE=...
ARG BASE_IMAGE=public.ecr.aws/deep-learning-containers/vllm:0.30.0-gpu-py312-cu130-ubuntu24.04-sagemaker-v1.1
FROM ${BASE_IMAGE}

# Tells SageMaker AI that this container serves /invocations-bidirectional-stream on :8080.
LABEL com.amazonaws.sagemaker.capabilities.bidirectional-streaming=true

ENV PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /opt/program

# The bridge's packages only (vLLM is in the image already), pinned as in requirements.txt and
# installed apart from vLLM's environment so that neither can upgrade the other's dependencies.
COPY requirements.txt /opt/program/requirements.txt
RUN grep -E '^(fastapi|starlette|uvicorn(\[standard\])?|websockets|httpx|prometheus-client)==' requirements.txt \
        > /tmp/bridge-requirements.txt \
    && python3 -m pip install --target /opt/bridge-packages -r /tmp/bridge-requirements.txt \
    && rm /tmp/bridge-requirements.txt

COPY components /opt/program/components
COPY container /opt/program/container
RUN chmod 0755 /opt/program/container/serve \
    && python3 -m compileall -q /opt/program/components /opt/program/container

# Engine, ports, the bridge's package path, and an idle timeout, which vllm serve lacks
# (see README, section "SageMaker container").
ENV ENGINE=vllm \
    BRIDGE_HOST=0.0.0.0 \
    BRIDGE_PORT=8080 \
    UPSTREAM_PORT=8081 \
    BRIDGE_PYTHONPATH=/opt/bridge-packages \
    BRIDGE_IDLE_TIMEOUT=120

# Recommended settings for Voxtral-Mini-4B-Realtime on one 24 GB GPU (ml.g6.4xlarge):
# 45000 tokens of context is about one hour of audio at 80 ms per token.
ENV SM_VLLM_MODEL=mistralai/Voxtral-Mini-4B-Realtime-2602 \
    SM_VLLM_TOKENIZER_MODE=mistral \
    SM_VLLM_COMPILATION_CONFIG='{"cudagraph_mode": "PIECEWISE"}' \
    SM_VLLM_MAX_MODEL_LEN=45000

EXPOSE 8080
# For docker run (SageMaker asks /ping itself): the same check SageMaker makes.
HEALTHCHECK --interval=30s --timeout=5s --start-period=480s --retries=3 \
    CMD ["python3", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/ping' % os.environ.get('BRIDGE_PORT', '8080'), timeout=3)"]
ENTRYPOINT ["/opt/program/container/serve"]
CMD ["serve"]
