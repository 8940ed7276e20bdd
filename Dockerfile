# The gateway under gunicorn's gevent worker, as a non-root user, with a health check on /healthz.
#
#   podman build -t chat-gateway .                       # or docker build
#   podman run -p 8000:8000 -e OPENAI_API_KEY=... chat-gateway
#
# BASE: any image with Python 3.11 and venv (python:3.11-slim by default; where no registry can be reached, a base
# made from Debian's packages, see the README). LOCAL_MODEL=true also builds the embedded demo model (llama.cpp's
# server, compiled from source: several minutes; the compilers are removed again).
# PIP_CERT: the path, inside the build, of a CA bundle for pip behind a TLS-inspecting proxy (mount it there).
ARG BASE=python:3.11-slim
FROM ${BASE}
ARG LOCAL_MODEL=false
ARG PIP_CERT
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PATH=/opt/venv/bin:$PATH HOST=0.0.0.0 PORT=8000
WORKDIR /app
COPY requirements.txt requirements-local.txt ./
# pip reads PIP_CERT itself; an empty one (the argument not given) is dropped first
RUN if [ -z "$PIP_CERT" ]; then unset PIP_CERT; fi \
 && python3 -m venv /opt/venv \
 && pip install --no-cache-dir --disable-pip-version-check -r requirements.txt \
 && useradd --create-home --uid 10001 app \
 && mkdir -p /app/instance && chown app /app/instance
COPY scripts/install-local-model ./scripts/
RUN if [ -z "$PIP_CERT" ]; then unset PIP_CERT; fi \
 && if [ "$LOCAL_MODEL" = "true" ]; then \
      apt-get update && apt-get install -y --no-install-recommends g++ cmake make \
      && PYTHON=/opt/venv/bin/python scripts/install-local-model \
      && apt-get purge -y g++ cmake make && apt-get autoremove -y && rm -rf /var/lib/apt/lists/* /root/.cache; \
    fi
COPY service ./service
COPY wsgi.py gunicorn.conf.py alembic.ini ./
USER app
EXPOSE 8000
HEALTHCHECK --interval=30s --timeout=3s --start-period=10s \
  CMD python3 -c "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/healthz' % os.environ.get('PORT', '8000'), timeout=2)" || exit 1
CMD ["gunicorn", "-c", "gunicorn.conf.py", "wsgi:app"]
