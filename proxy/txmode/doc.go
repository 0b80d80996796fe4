// Package txmode is the bookkeeping of transaction pooling: for each client, what it has in
// flight on the server it holds, its prepared statements (mapped to statements shared by every
// client under server-side names), its session parameters, why it is pinned, and the memory of
// a request that may be sent again. It does no I/O and takes no locks (the statement Registry
// shared by every client guards itself): a Tracker is fed the client's buffered messages
// (ScanClient) and the server's (ScanServer) and answers with what to send on, what to tell the
// client, and what the caller must do (Events: count a pin, send a refused batch again, retire
// a demoted server, wake a waiter). The proxy's session keeps the sockets, the locks and the
// timers around it and calls it under its own lock.
//
//	var t txmode.Tracker
//	t.Init(reg, limits)
//	scan := t.ScanClient(clientFrames, serverState) // write scan.Out to the server
//	out, ready, status, needWrite, err := t.ScanServer(serverFrames, serverState, writing, closing)
//	ev := t.TakeEvents()
//
// What the tracker adds to what the client sent is limited to: Parse (and a Close before it)
// of shared statements a server lacks, a Describe that reads a statement's shape back before a
// Bind the client made by that shape, Flush, and a batch the server refused whole (0A000,
// 26000) sent again; FuzzTxMode in package proxy checks it.
package txmode
