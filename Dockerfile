# The urldisk image: the CLI, serve, the agent and the CSI driver
# (`urldisk csi`, deploy/kubernetes/). The node plugin runs nbdfuse, a
# loop device (losetup) and mkfs/mount; the rest of the image is the
# binary.
FROM golang:1.26-trixie AS build
WORKDIR /src
COPY go.mod go.sum ./
RUN go mod download
COPY . .
RUN CGO_ENABLED=0 go build -trimpath -ldflags='-s -w' -o /out/urldisk ./cmd/urldisk

FROM debian:trixie-slim
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
      ca-certificates nbdfuse fuse3 mount util-linux e2fsprogs xfsprogs \
 && rm -rf /var/lib/apt/lists/*
COPY --from=build /out/urldisk /usr/local/bin/urldisk
ENTRYPOINT ["/usr/local/bin/urldisk"]
