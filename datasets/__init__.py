"""The data: `raw` reads and prepares the raw releases, `prepared` feeds prepared folders to training,
`device_augmentation` augments whole batches on the training device."""
