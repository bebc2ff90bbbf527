# Image for every speckleflow service in compose.yaml (Tiled, proxy, workers).
FROM python:3.11-slim
WORKDIR /opt/speckleflow
COPY . .
RUN pip install --no-cache-dir .
ENV OMP_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1
