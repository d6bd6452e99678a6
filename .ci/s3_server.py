"""A real S3-compatible server on loopback for the remote-store tests: moto's server, with
signature checking on, one bucket, one IAM user whose keys are written to a state file.

Run by .ci/s3-server.sh (which installs moto into a venv first); not a test itself.

    python s3_server.py STATE_FILE [WATCH_PID]

binds 127.0.0.1 on a free port, creates the user, its access key and the bucket `squirrel-test`,
then writes STATE_FILE (shell `export` lines: the endpoint and the credentials) and serves until
killed, or until process WATCH_PID (a test binary that started it) is gone. Requests that write (PUT, POST, DELETE) are served one at a time, so a conditional put
(`If-None-Match: *`, `If-Match: ETAG`) is atomic as on S3: moto checks the condition and then
stores the object in two steps, and two writers interleaving there would both succeed.
"""

import os
import sys
import threading
import time

# Authentication is enforced from the 4th request on: the first three create the user, its
# key and its policy. Must be set before moto is imported.
os.environ["INITIAL_NO_AUTH_ACTION_COUNT"] = "3"

import boto3  # noqa: E402  (moto depends on boto3)
from moto.moto_server.werkzeug_app import (  # noqa: E402
    DomainDispatcherApplication,
    create_backend_app,
)
from werkzeug.serving import make_server  # noqa: E402

BUCKET = "squirrel-test"
REGION = "us-east-1"


def main() -> None:
    state = sys.argv[1]
    inner = DomainDispatcherApplication(create_backend_app)
    write_lock = threading.Lock()

    def app(environ, start_response):
        if environ.get("REQUEST_METHOD") in ("PUT", "POST", "DELETE"):
            with write_lock:
                # The whole body is produced under the lock: moto does its work while building
                # the response, and the iterable is drained here.
                return [b"".join(inner(environ, start_response))]
        return inner(environ, start_response)

    server = make_server("127.0.0.1", 0, app, threaded=True)
    host, port = server.server_address[:2]
    endpoint = f"http://{host}:{port}"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()

    anon = dict(endpoint_url=endpoint, region_name=REGION,
                aws_access_key_id="setup", aws_secret_access_key="setup")
    iam = boto3.client("iam", **anon)
    iam.create_user(UserName="squirrel")
    key = iam.create_access_key(UserName="squirrel")["AccessKey"]
    iam.put_user_policy(
        UserName="squirrel",
        PolicyName="all",
        PolicyDocument='{"Version":"2012-10-17","Statement":'
        '[{"Effect":"Allow","Action":"*","Resource":"*"}]}',
    )
    s3 = boto3.client("s3", endpoint_url=endpoint, region_name=REGION,
                      aws_access_key_id=key["AccessKeyId"],
                      aws_secret_access_key=key["SecretAccessKey"])
    s3.create_bucket(Bucket=BUCKET)

    tmp = state + ".tmp"
    with open(tmp, "w") as f:
        f.write(f"export SQUIRREL_S3_ENDPOINT={endpoint}\n")
        f.write(f"export SQUIRREL_S3_BUCKET={BUCKET}\n")
        f.write(f"export SQUIRREL_S3_REGION={REGION}\n")
        f.write(f"export SQUIRREL_S3_ACCESS_KEY_ID={key['AccessKeyId']}\n")
        f.write(f"export SQUIRREL_S3_SECRET_ACCESS_KEY={key['SecretAccessKey']}\n")
        f.write(f"export SQUIRREL_S3_PID={os.getpid()}\n")
    os.replace(tmp, state)  # the state file appears whole, once the server is ready
    if len(sys.argv) > 2:
        watch = int(sys.argv[2])
        while True:
            try:
                os.kill(watch, 0)
            except ProcessLookupError:
                os._exit(0)
            time.sleep(1)
    thread.join()


if __name__ == "__main__":
    main()
