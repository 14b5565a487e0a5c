//! Lock, RLock, Semaphore, BoundedSemaphore, Event, Condition and Barrier across processes (in progress).
