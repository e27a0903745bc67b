# The image a Hugging Face Job runs for hub-export-bot (`hub-export-bot deploy --image ...`, `serve --runner hf-jobs`).
# CPU torch from PyTorch's CPU index, the bot installed by the same script CI uses, a non-root user.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    HF_HUB_DISABLE_TELEMETRY=1 \
    TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu

RUN useradd --create-home --uid 1000 --user-group --shell /usr/sbin/nologin bot

WORKDIR /opt/hub-export-bot
COPY pyproject.toml README.md ./
COPY bot ./bot
COPY templates ./templates
COPY scripts/install.sh ./scripts/install.sh
RUN scripts/install.sh && rm -rf /root/.cache

USER 1000:1000
WORKDIR /home/bot
CMD ["hub-export-bot", "job"]
