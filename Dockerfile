# The operator image: multi-stage, non-root, pinned base. Only the operator's runtime
# dependencies are installed (Ray, vLLM and HAProxy run in the Ray pods, not here).
ARG PYTHON_IMAGE=python:3.11.14-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
COPY pyproject.toml README.md ./
COPY operator ./operator
RUN python -m venv /opt/llmservice \
 && /opt/llmservice/bin/pip install --upgrade pip \
 && /opt/llmservice/bin/pip install .

FROM ${PYTHON_IMAGE}
LABEL org.opencontainers.image.title="llmservice-operator" \
      org.opencontainers.image.description="LLMService -> Ray Serve LLM on GKE"
COPY --from=build /opt/llmservice /opt/llmservice
ENV PATH=/opt/llmservice/bin:$PATH PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1
# Numeric user: Kubernetes can verify runAsNonRoot without a passwd lookup.
USER 65532:65532
EXPOSE 8080 9090
ENTRYPOINT ["llmservice"]
CMD ["run"]
