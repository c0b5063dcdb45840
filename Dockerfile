# One image for the three services; compose.yaml picks the command.
FROM python:3.11-slim
ENV PYTHONUNBUFFERED=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1
WORKDIR /app
COPY pyproject.toml README.md ./
COPY shared ./shared
COPY order_svc ./order_svc
COPY payment_svc ./payment_svc
COPY inventory_svc ./inventory_svc
RUN pip install . && useradd --system --uid 10001 saga && mkdir /data && chown saga /data
USER saga
ENV DATA_DIR=/data LOG_FORMAT=json
CMD ["order-svc"]
