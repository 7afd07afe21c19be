# One image for every HEAN process; docker-compose.yml picks the command per service.
FROM python:3.12-slim

RUN apt-get update \
    && apt-get install -y --no-install-recommends g++ make \
    && rm -rf /var/lib/apt/lists/*

WORKDIR /app
COPY . /app
# The same install as `make`: build deps first, then the package (C++ core included).
RUN python -m pip install --no-cache-dir "scikit-build-core>=1.1.2" "pybind11>=3.1.0" \
        "cmake>=4.4" "ninja>=1.13" \
    && python -m pip install --no-cache-dir --no-build-isolation -e . \
    && useradd --create-home --uid 10001 hean \
    && mkdir -p /data && chown hean /data

USER hean
ENV HEAN_HOME=/data PYTHONUNBUFFERED=1
EXPOSE 8000 5555
CMD ["python", "-m", "web"]
