"""Settings shared by the services, the stack runner and the tests (environment variables)."""

from __future__ import annotations

from functools import cached_property
from pathlib import Path

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

from shared.kafka_access import KafkaAccess, SecurityProtocol

PROJECT_ROOT = Path(__file__).resolve().parents[1]

SERVICE_PORTS = {"referrals": 8001, "aids": 8002, "outcomes": 8003}
CONSOLE_PORT = 8000


class Settings(BaseSettings):
    model_config = SettingsConfigDict(extra="ignore", populate_by_name=True)

    data_dir: Path = Field(default=PROJECT_ROOT / "var", alias="E2C_DATA_DIR")
    kafka_bootstrap_servers: str = Field(
        default="127.0.0.1:9092", alias="KAFKA_BOOTSTRAP_SERVERS"
    )
    # The broker accepts only SASL/SCRAM-SHA-512 clients: a principal and its password, with
    # no default (`e2c stack client-config --role ROLE` prints a role's).
    kafka_username: str | None = Field(default=None, alias="E2C_KAFKA_USERNAME")
    kafka_password: SecretStr | None = Field(default=None, alias="E2C_KAFKA_PASSWORD")
    kafka_security_protocol: SecurityProtocol = Field(
        default="SASL_PLAINTEXT", alias="E2C_KAFKA_SECURITY_PROTOCOL"
    )
    kafka_ssl_cafile: Path | None = Field(default=None, alias="E2C_KAFKA_SSL_CAFILE")
    kafka_port: int = Field(default=9092, alias="E2C_KAFKA_PORT")
    kafka_controller_port: int = Field(default=9093, alias="E2C_KAFKA_CONTROLLER_PORT")
    redis_url: str = Field(default="redis://127.0.0.1:6379/0", alias="REDIS_URL")
    topic_partitions: int = Field(default=3, ge=1, alias="E2C_TOPIC_PARTITIONS")
    tokens_file: Path | None = Field(default=None, alias="E2C_TOKENS_FILE")
    schools_file: Path | None = Field(default=None, alias="E2C_SCHOOLS_FILE")
    referrals_database_url: str | None = Field(default=None, alias="REFERRALS_DATABASE_URL")
    aids_database_url: str | None = Field(default=None, alias="AIDS_DATABASE_URL")
    outcomes_database_url: str | None = Field(default=None, alias="OUTCOMES_DATABASE_URL")
    host: str = Field(default="127.0.0.1", alias="E2C_HOST")
    instance_id: str | None = Field(default=None, alias="E2C_INSTANCE_ID")
    referrals_port: int = Field(default=SERVICE_PORTS["referrals"], alias="REFERRALS_PORT")
    aids_port: int = Field(default=SERVICE_PORTS["aids"], alias="AIDS_PORT")
    outcomes_port: int = Field(default=SERVICE_PORTS["outcomes"], alias="OUTCOMES_PORT")
    console_port: int = Field(default=CONSOLE_PORT, alias="CONSOLE_PORT")
    # Where the console reaches each service's HTTP API (compose: http://aids:8002); unset,
    # http://<E2C_HOST>:<its port> (127.0.0.1 when the host is a wildcard).
    referrals_url: str | None = Field(default=None, alias="REFERRALS_URL")
    aids_url: str | None = Field(default=None, alias="AIDS_URL")
    outcomes_url: str | None = Field(default=None, alias="OUTCOMES_URL")
    # The console's session cookie: its lifetime, and `Secure` (on behind HTTPS).
    console_session_minutes: float = Field(default=480, gt=0, alias="E2C_CONSOLE_SESSION_MINUTES")
    console_secure_cookie: bool = Field(default=False, alias="E2C_CONSOLE_SECURE_COOKIE")
    # Unknown tokens one address may try in a minute before its sign-ins answer 429.
    console_signin_refusals_per_minute: int = Field(
        default=10, ge=1, alias="E2C_CONSOLE_SIGNIN_REFUSALS_PER_MINUTE"
    )
    consumer_batch_size: int = Field(default=500, ge=1, alias="E2C_CONSUMER_BATCH_SIZE")
    # (1.1) Erased personal data leaves every copy within this many days (a float: a test
    # or an operator proving it shortens it to seconds); `shared.erasure` derives the rest.
    erasure_max_days: float = Field(default=7, gt=0, alias="E2C_ERASURE_MAX_DAYS")
    retention_months: int = Field(default=24, ge=1, alias="E2C_RETENTION_MONTHS")
    retention_interval_hours: float = Field(
        default=24, gt=0, alias="E2C_RETENTION_INTERVAL_HOURS"
    )
    # (1.1) Enrolled and never exited: personal data erased this long after the enrollment
    # (a fraction counts 30-day months, so a test can shorten it to seconds).
    enrolled_retention_months: float = Field(
        default=36, gt=0, alias="E2C_ENROLLED_RETENTION_MONTHS"
    )
    # (1.1) Accepted or pending and not enrolled this many days after the decision: expired.
    referral_expiry_days: float = Field(default=90, gt=0, alias="E2C_REFERRAL_EXPIRY_DAYS")
    expiry_interval_seconds: float = Field(
        default=3600, gt=0, alias="E2C_EXPIRY_INTERVAL_SECONDS"
    )
    aid_rules_file: Path | None = Field(default=None, alias="E2C_AID_RULES_FILE")
    hold_seconds: float = Field(default=24 * 3600, gt=0, alias="E2C_HOLD_SECONDS")
    hold_sweep_seconds: float = Field(default=60, gt=0, alias="E2C_HOLD_SWEEP_SECONDS")
    log_level: str = Field(default="INFO", alias="E2C_LOG_LEVEL")
    # Each bearer token's requests per second and burst (HTTP, kept in Redis, fail open).
    rate_limit_per_second: float = Field(default=10, gt=0, alias="E2C_RATE_LIMIT_PER_SECOND")
    rate_limit_burst: int = Field(default=50, ge=1, alias="E2C_RATE_LIMIT_BURST")
    # Webhooks (referrals): a failed delivery is tried again after BACKOFF * 2^(n-1) seconds
    # (at most BACKOFF_MAX), and parked after MAX_ATTEMPTS failures. A worker leases the
    # deliveries it sends for LEASE seconds, which must be longer than a send's TIMEOUT (the
    # service refuses to start otherwise).
    webhook_max_attempts: int = Field(default=8, ge=1, alias="E2C_WEBHOOK_MAX_ATTEMPTS")
    webhook_backoff_seconds: float = Field(default=2, gt=0, alias="E2C_WEBHOOK_BACKOFF_SECONDS")
    webhook_backoff_max_seconds: float = Field(
        default=3600, gt=0, alias="E2C_WEBHOOK_BACKOFF_MAX_SECONDS"
    )
    webhook_timeout_seconds: float = Field(default=5, gt=0, alias="E2C_WEBHOOK_TIMEOUT_SECONDS")
    webhook_lease_seconds: float = Field(default=60, gt=0, alias="E2C_WEBHOOK_LEASE_SECONDS")
    webhook_poll_seconds: float = Field(default=1, gt=0, alias="E2C_WEBHOOK_POLL_SECONDS")

    @cached_property
    def stores_dir(self) -> Path:
        return self.data_dir / "stores"

    def database_url(self, service: str) -> str:
        """The service's store: its `*_DATABASE_URL`, else a SQLite file in the data folder."""
        url = getattr(self, f"{service}_database_url")
        if url:
            return url
        return f"sqlite:///{self.stores_dir / f'{service}.db'}"

    def kafka_access(self) -> KafkaAccess:
        """This process's credentials on the broker; refuses to go on without them."""
        if not self.kafka_username or self.kafka_password is None:
            raise RuntimeError(
                "E2C_KAFKA_USERNAME and E2C_KAFKA_PASSWORD are needed (the broker refuses "
                "anonymous clients): `e2c stack client-config --role ROLE` prints them"
            )
        return KafkaAccess(
            bootstrap=self.kafka_bootstrap_servers,
            username=self.kafka_username,
            password=self.kafka_password,
            security_protocol=self.kafka_security_protocol,
            ssl_cafile=self.kafka_ssl_cafile,
        )

    def with_kafka(self, access: KafkaAccess) -> Settings:
        """These settings, connecting to the broker as `access` says."""
        return self.model_copy(update={
            "kafka_bootstrap_servers": access.bootstrap,
            "kafka_username": access.username,
            "kafka_password": access.password,
            "kafka_security_protocol": access.security_protocol,
            "kafka_ssl_cafile": access.ssl_cafile,
        })

    def port(self, service: str) -> int:
        return getattr(self, f"{service}_port")

    def service_url(self, service: str) -> str:
        """The base URL of a service's HTTP API, as a client on this host reaches it."""
        url: str | None = getattr(self, f"{service}_url")
        if url:
            return url.rstrip("/")
        host = "127.0.0.1" if self.host in ("0.0.0.0", "::") else self.host
        return f"http://{host}:{self.port(service)}"

