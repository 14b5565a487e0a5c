//! Pipe, Connection, wait() and Listener/Client (in progress).
