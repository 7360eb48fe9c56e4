"""TLS to the upstream: verified against a CA file, refused when it cannot be
verified, and accepted unverified only when asked."""
from support.aio import run
from support.proxy import in_process
from support.rawhttp import RawClient
from support.tls import make_ca_and_server, server_context, temp_dir
from support.upstream import RecordingUpstream, echo


def _through_tls(**options):
    with temp_dir() as directory:
        ca, cert, key = make_ca_and_server(directory)
        if options.pop("with_ca", False):
            options["upstream_ca_file"] = ca

        async def main():
            async with RecordingUpstream(echo, ssl=server_context(cert, key)) as up:
                async with in_process(up.url, **options) as proxy:
                    client = await RawClient.connect(proxy.url)
                    results = [await client.request("POST", f"/tls/{i}", b"secret" * 1000)
                               for i in range(3)]
                    client.close()
                    return results, len(up.connections)

        return run(main())


def test_verified_tls_upstream_with_a_ca_file():
    results, conns = _through_tls(with_ca=True)
    assert [r.status for r in results] == [200, 200, 200]
    assert all(r.body == b"secret" * 1000 for r in results)
    assert conns == 1


def test_unverifiable_tls_upstream_gives_502():
    results, _ = _through_tls()
    assert results[0].status == 502
    assert "certificate" in results[0].json()["error"]["reason"].lower()


def test_verification_can_be_turned_off():
    results, _ = _through_tls(upstream_verify=False)
    assert [r.status for r in results] == [200, 200, 200]
