# The operator image. For users with Docker (kind, Artifact Registry):
#   docker build -t llmservice.dev/operator:0.1.0 .
# Machines without Docker build the same contents as an OCI archive with
# `python -m e2e.build.image --operator` (mmdebstrap + the same install.sh and pins).
# Only the operator's runtime dependencies are installed (Ray, vLLM and HAProxy run in the
# Ray pods, not here).
FROM debian:bookworm-slim
COPY images/operator/ /tmp/build/
COPY pyproject.toml README.md /tmp/build/src/
COPY operator /tmp/build/src/operator
RUN /tmp/build/install.sh && rm -rf /tmp/build
LABEL org.opencontainers.image.title="llmservice-operator" \
      org.opencontainers.image.description="LLMService -> Ray Serve LLM on GKE"
ENV PATH=/opt/llmservice/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1
# Numeric user: Kubernetes can verify runAsNonRoot without a passwd lookup.
USER 65532:65532
EXPOSE 8080 9090
ENTRYPOINT ["llmservice"]
CMD ["run"]
