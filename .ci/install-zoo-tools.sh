#!/usr/bin/env bash
# What the third-party model corpus needs to make its evaluation data (scripts/make_zoo_data.py): espeak-ng
# speaks the sentences silero-vad is evaluated on, sox resamples them to 16 kHz, and DejaVu fonts render the
# text the PP-OCR models read. Debian packages; idempotent: does nothing when all are present.
set -euo pipefail
if command -v espeak-ng >/dev/null && command -v sox >/dev/null && fc-list 2>/dev/null | grep -qi dejavu; then
    exit 0
fi
SUDO=""
[ "$(id -u)" = 0 ] || SUDO="sudo"
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends espeak-ng sox fonts-dejavu-core fontconfig >/dev/null
espeak-ng --version | head -1
