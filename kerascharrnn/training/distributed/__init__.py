"""Training on several devices or machines (--strategy mirrored | multi_worker): `cluster` reads TF_CONFIG
without TensorFlow, `strategy` makes the tf.distribute strategy (with a watchdog on the workers' start-up),
`trainer` trains under it with the carried state explicit per replica. docs/distributed.md has the user's
side."""
