"""Media storage against moto's S3 server over real HTTP."""

from __future__ import annotations

import httpx
import pytest

from core.settings import Settings, SettingsError
from core.storage import MediaStore, media_key


def settings_for(endpoint: str, **extra: object) -> Settings:
    values: dict[str, object] = {
        "s3_endpoint_url": endpoint,
        "s3_bucket": "storage-test",
        "aws_access_key": "testing",
        "aws_secret_key": "testing",
        "presigned_url_ttl": 120,
        **extra,
    }
    return Settings(**values)  # type: ignore[arg-type]


def test_bucket_created_put_and_presigned_get(s3_endpoint: str) -> None:
    store = MediaStore(settings_for(s3_endpoint))
    store.ensure_bucket()
    store.ensure_bucket()  # a second call finds it and changes nothing
    key = media_key("t1", "audio", 0)
    assert key == "tasks/t1/audio-0.wav"
    assert store.size(key) is None
    store.put(key, b"RIFF....WAVE", "audio/wav")
    assert store.size(key) == 12
    url = store.presign(key)
    assert "X-Amz-Expires=120" in url
    response = httpx.get(url)
    assert response.status_code == 200
    assert response.content == b"RIFF....WAVE"
    # Without the signature the object is not public.
    assert httpx.get(url.split("?")[0]).status_code == 403


def test_public_endpoint_goes_into_presigned_urls(s3_endpoint: str) -> None:
    public = s3_endpoint.replace("127.0.0.1", "localhost")
    store = MediaStore(settings_for(s3_endpoint, s3_public_endpoint_url=public))
    store.ensure_bucket()
    store.put("k", b"x", "application/octet-stream")
    url = store.presign("k")
    assert url.startswith(public + "/storage-test/k?")
    assert httpx.get(url).content == b"x"


def test_bucket_is_created_in_a_region_other_than_us_east_1(s3_endpoint: str) -> None:
    # Without a LocationConstraint, S3 (and moto) refuse with IllegalLocationConstraint.
    settings = settings_for(s3_endpoint, aws_region_name="eu-west-1", s3_bucket="in-eu-west-1")
    store = MediaStore(settings)
    store.ensure_bucket()
    store.ensure_bucket()
    location = store.client.get_bucket_location(Bucket="in-eu-west-1")
    assert location["LocationConstraint"] == "eu-west-1"


def test_an_unreachable_store_is_one_line_naming_the_setting() -> None:
    from tests.conftest import free_port

    store = MediaStore(settings_for(f"http://127.0.0.1:{free_port()}"))
    with pytest.raises(SettingsError) as caught:
        store.ensure_bucket()
    message = str(caught.value)
    assert "\n" not in message
    assert "'storage-test'" in message
    assert "check S3_ENDPOINT_URL" in message
