"""Raw CAN readers, windowing into graphs, the mmap graph cache and batching."""
