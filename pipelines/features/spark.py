"""One SparkSession per process, built from the platform profile (master, spark_conf), with quiet logs.

Starting a session costs about 7 s, so steps call :func:`get_spark` and never stop the session: a process that
runs several steps (tests, the embedded demo) reuses it. PySpark is imported lazily.
"""

from __future__ import annotations

import logging
import os
import sys
import tempfile
import threading
from pathlib import Path
from typing import TYPE_CHECKING

from pipelines.config import Profile

if TYPE_CHECKING:
    from pyspark.sql import SparkSession

APP_NAME = "mlops-pipelines"

# Defaults under the profile's spark_conf (the profile wins). UTC everywhere: the lake stores UTC timestamps.
# Timestamps are written as TIMESTAMP_MICROS (not INT96) so pyarrow/pandas readers get tz-aware UTC values.
DEFAULT_CONF: dict[str, str] = {
    "spark.sql.session.timeZone": "UTC",
    "spark.sql.parquet.outputTimestampType": "TIMESTAMP_MICROS",
    "spark.sql.shuffle.partitions": "4",
    "spark.ui.enabled": "false",
    "spark.ui.showConsoleProgress": "false",
    "spark.sql.execution.arrow.pyspark.enabled": "true",
}
# Extra defaults for local masters: bind to loopback so odd container host names do not matter, and use the
# JVM's quick (C1) compiler only: our jobs are short and run in a fresh process per task, where the optimizing
# compiler costs more than it saves (a month of features on 2 cores: about 1-2 s less). With C1 only the JVM
# reserves 48 MB for compiled code; Spark compiles a class per query stage, and a long-lived session (the demo's
# in-process runs, a large rebuild) filled it by mid-year, after which the JVM stops compiling and runs every
# later job interpreted ("CodeCache is full. Compiler has been disabled"): hence a larger reservation.
LOCAL_CONF: dict[str, str] = {
    "spark.driver.host": "127.0.0.1",
    "spark.driver.bindAddress": "127.0.0.1",
}
LOCAL_JAVA_OPTIONS = "-XX:TieredStopAtLevel=1 -XX:+UseSerialGC -XX:ReservedCodeCacheSize=256m"

_LOG4J2 = """\
rootLogger.level = error
rootLogger.appenderRef.stderr.ref = console
appender.console.type = Console
appender.console.name = console
appender.console.target = SYSTEM_ERR
appender.console.layout.type = PatternLayout
appender.console.layout.pattern = %d{HH:mm:ss} %p %c{1}: %m%n
"""

_lock = threading.Lock()
_session: SparkSession | None = None


def _quiet_log_config() -> Path:
    """A log4j2 file that shows only errors (Spark's default prints INFO/WARN lines on every start)."""
    path = Path(tempfile.gettempdir()) / "mlops-spark-log4j2.properties"
    if not path.is_file() or path.read_text() != _LOG4J2:
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        tmp.write_text(_LOG4J2)
        os.replace(tmp, path)
    return path


def local_cores(master: str) -> int:
    """The cores a ``local``, ``local[N]``, ``local[*]`` or ``local[N,F]`` master runs tasks on."""
    inside = master.partition("[")[2].partition("]")[0].split(",")[0].strip()
    if not inside:
        return 1
    if inside == "*":
        return os.cpu_count() or 1
    return max(1, int(inside)) if inside.isdigit() else 1


def spark_conf(profile: Profile) -> dict[str, str]:
    """The effective Spark configuration for ``profile``: defaults, then the profile's ``spark_conf``."""
    local = profile.spark_master.startswith("local")
    conf = dict(DEFAULT_CONF)
    if local:
        conf.update(LOCAL_CONF)
        # two shuffle partitions per core, so every core has work in each shuffle on larger machines (adaptive
        # execution coalesces them again for small data); 4 at least, as before
        conf["spark.sql.shuffle.partitions"] = str(max(4, 2 * local_cores(profile.spark_master)))
    java_options = f"-Dlog4j2.configurationFile=file:{_quiet_log_config()}"
    conf["spark.driver.extraJavaOptions"] = f"{java_options} {LOCAL_JAVA_OPTIONS}" if local else java_options
    conf.update(profile.spark_conf)
    return conf


def _alive(session: SparkSession) -> bool:
    context = session.sparkContext
    return getattr(context, "_jsc", None) is not None


def get_spark(profile: Profile) -> SparkSession:
    """The process's SparkSession, started on first use from ``profile`` (master, spark_conf).

    Later calls return the same session (the profile of the first call wins); a stopped session is rebuilt.
    """
    global _session
    with _lock:
        if _session is not None and _alive(_session):
            return _session
        os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
        os.environ.setdefault("PYSPARK_DRIVER_PYTHON", sys.executable)
        if profile.spark_master.startswith("local"):
            os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")
        from pipelines.timings import fixed_cost

        with fixed_cost("spark_session"):  # PySpark's import and the JVM's start: once per process
            from pyspark.sql import SparkSession

            builder = SparkSession.builder.master(profile.spark_master).appName(APP_NAME)
            for key, value in spark_conf(profile).items():
                builder = builder.config(key, value)
            session = builder.getOrCreate()
            session.sparkContext.setLogLevel("ERROR")
        logging.getLogger("py4j").setLevel(logging.WARNING)  # its INFO lines (e.g. on shutdown) are noise
        _session = session
        return session
