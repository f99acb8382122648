// Package csi is urldisk's Container Storage Interface driver: Identity,
// Controller and Node services over gRPC on one endpoint, so that a
// Kubernetes cluster provisions, snapshots, clones and mounts urldisk
// volumes.
//
// The controller works on pools directly (volume.Pool): create, clone,
// checkpoint and remove are a few object-store requests, never a copy.
// The node runs one `urldisk serve` child per staged volume (the export
// path serve and the agent share), presents it as a kernel block device
// through nbdfuse and a loop device, formats it on first use and mounts it.
// What a node staged is recorded in a state file per volume, so a restarted
// driver still unstages what its predecessor staged.
//
// Identifiers carry their pool: a volume id is the canonical volume URL
// (volref.Ref.URL), a snapshot id the same URL with "@label". Credentials
// come only from the CO's secrets (keys accessKeyID, secretAccessKey,
// sessionToken), never from parameters, and are not logged.
package csi
