# One image for the API and the workers. Build with a CUDA torch for GPU workers:
#   docker build --build-arg TORCH_INDEX=https://download.pytorch.org/whl/cu128 -t mol-studio .
FROM python:3.11-slim
ARG TORCH_INDEX=https://download.pytorch.org/whl/cpu
ENV PYTHONUNBUFFERED=1 MOL_HOME=/data HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
WORKDIR /app
RUN pip install --no-cache-dir torch --index-url "$TORCH_INDEX"
COPY pyproject.toml README.md ./
COPY mol_engine ./mol_engine
COPY store ./store
COPY api ./api
COPY worker ./worker
COPY mol_cli ./mol_cli
COPY frontend ./frontend
RUN pip install --no-cache-dir .
VOLUME ["/data", "/models"]
EXPOSE 8000
CMD ["mol", "up", "--host", "0.0.0.0", "--port", "8000"]
