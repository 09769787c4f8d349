"""A job on a Ray cluster (Ray Data): the plan made once on the driver, chunks of whole prefix
groups run by one engine per actor, results written by the driver as they come back.

Needs the optional extra `batchllm-cli[ray]`; nothing here imports Ray until it is used.
`worker.ShardRunner` is the callable class for `Dataset.map_batches`; `ray_job` is the driver.
"""
