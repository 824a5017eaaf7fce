# mssgate gateway image: `docker compose up` (compose.yaml) runs it beside PostgreSQL.
# See docs/deployment.md.
FROM python:3.11-slim

# Debian's Dovecot does the mailbox work behind our IMAP front door; gnupg encrypts for RIS
# consumers with an OpenPGP key; openssl is what operators (and the tests) check certs with.
RUN apt-get update \
    && apt-get install -y --no-install-recommends dovecot-imapd dovecot-lmtpd gnupg openssl \
    && rm -rf /var/lib/apt/lists/*

# No shell, no home to speak of: the gateway only needs its data folder.
RUN groupadd --system mssgate \
    && useradd --system --gid mssgate --home-dir /var/lib/mssgate --shell /usr/sbin/nologin mssgate \
    && mkdir -p /var/lib/mssgate/certs /var/lib/mssgate-b \
    && chown -R mssgate:mssgate /var/lib/mssgate /var/lib/mssgate-b \
    && chmod 0700 /var/lib/mssgate /var/lib/mssgate/certs /var/lib/mssgate-b

WORKDIR /src
COPY pyproject.toml README.md ./
COPY mssgate ./mssgate
RUN pip install --no-cache-dir . && rm -rf /src

COPY docker/entrypoint.sh /usr/local/bin/mssgate-entrypoint
COPY docker/healthcheck.py /usr/local/bin/mssgate-healthcheck
RUN chmod 0755 /usr/local/bin/mssgate-entrypoint /usr/local/bin/mssgate-healthcheck

# The standard ports, inside the container too: autoconfig and the peers are told the
# configured ports, so they must be the ones clients reach. A non-root process may bind them
# because the container sets net.ipv4.ip_unprivileged_port_start=0 (Docker's default since
# 20.10; compose.yaml sets it explicitly).
ENV MSSGATE_CONFIG=/var/lib/mssgate/mssgate.toml \
    MSSGATE_SERVER__DATA_DIR=/var/lib/mssgate \
    MSSGATE_SMTP__BIND=0.0.0.0 \
    MSSGATE_SMTP__MTA_PORT=25 \
    MSSGATE_SMTP__SMTPS_PORT=465 \
    MSSGATE_SMTP__SUBMISSION_PORT=587 \
    MSSGATE_IMAP__BIND=0.0.0.0 \
    MSSGATE_IMAP__PORT=143 \
    MSSGATE_IMAP__IMAPS_PORT=993 \
    MSSGATE_API__BIND=0.0.0.0 \
    MSSGATE_API__PORT=443 \
    PYTHONUNBUFFERED=1

EXPOSE 25 143 465 587 993 443
VOLUME ["/var/lib/mssgate", "/var/lib/mssgate/certs"]
USER mssgate
WORKDIR /var/lib/mssgate

HEALTHCHECK --interval=30s --timeout=10s --start-period=60s --retries=3 \
    CMD ["python", "/usr/local/bin/mssgate-healthcheck"]

ENTRYPOINT ["/usr/local/bin/mssgate-entrypoint"]
CMD ["serve"]
