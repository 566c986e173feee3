# One image for the worker, the trainer and the producer (CPU; see docker-compose.yml for GPU).
FROM python:3.11-slim
ENV PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1
WORKDIR /app
COPY pyproject.toml README.md ./
COPY stream_ae ./stream_ae
COPY trainer ./trainer
RUN pip install . && useradd --create-home --uid 10001 streamae && mkdir -p /models && chown streamae /models
USER streamae
ENV STREAM_AE_MODEL_DIR=/models STREAM_AE_METRICS_HOST=0.0.0.0 STREAM_AE_WEB_HOST=0.0.0.0
EXPOSE 6066 9108 9109
ENTRYPOINT ["stream-ae"]
CMD ["worker"]
