//! The smallest `lambda_http` function: the yardstick the cold-start bench measures the
//! gateway's functions against, built with the same profile.

use lambda_http::{run, service_fn, Error, Request};

#[tokio::main]
async fn main() -> Result<(), Error> {
    run(service_fn(|_: Request| async { Ok::<_, Error>("hello") })).await
}
