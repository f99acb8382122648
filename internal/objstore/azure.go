package objstore

import (
	"context"
	"fmt"
	"net/url"
	"os"
	"regexp"
	"strings"

	"github.com/Azure/azure-sdk-for-go/sdk/azcore"
	"github.com/Azure/azure-sdk-for-go/sdk/azcore/policy"
	"github.com/Azure/azure-sdk-for-go/sdk/azidentity"
	"github.com/Azure/azure-sdk-for-go/sdk/storage/azblob/container"
	"gocloud.dev/blob/azureblob"
)

// azureOptions are the query options of azblob:// URLs.
var azureOptions = []string{"endpoint"}

// validContainer is Azure's container name rule: 3-63 of a-z, 0-9 and
// '-', starting with a letter or digit, no "--", not ending in '-'.
var validContainer = regexp.MustCompile(`^[a-z0-9](?:-?[a-z0-9])+$`)

// azureConfig is a parsed azblob:// URL.
type azureConfig struct {
	container string
	prefix    string // "" or ends in "/"
	// endpoint is the blob service URL: "https://ACCOUNT.blob.core.windows.net",
	// or an emulator's "http://127.0.0.1:10000/ACCOUNT"; "" = from the
	// environment.
	endpoint string
}

func parseAzure(u *url.URL, q url.Values) (azureConfig, error) {
	b, err := parseBucketURL(u, q, bucketRule{
		options: azureOptions, what: "container", endpointPath: true,
		valid: func(h string) bool { return len(h) >= 3 && len(h) <= 63 && validContainer.MatchString(h) },
		rule:  "3-63 of a-z, 0-9 and single '-' between them",
	})
	if err != nil {
		return azureConfig{}, err
	}
	return azureConfig{container: b.bucket, prefix: b.prefix, endpoint: b.endpoint}, nil
}

// Azure's standard environment variables (those of the az CLI and of
// gocloud's azureblob).
const (
	envAzureConnectionString = "AZURE_STORAGE_CONNECTION_STRING"
	envAzureAccount          = "AZURE_STORAGE_ACCOUNT"
	envAzureKey              = "AZURE_STORAGE_KEY"
)

// openAzure opens an azblob:// pool root. Create-if-absent is Azure's own
// precondition (If-None-Match: *), which azureblob sends for IfNotExist; a
// taken key answers 409 BlobAlreadyExists or 412 ConditionNotMet, both of
// which map to ErrExists.
//
// Credentials, first found wins:
//   - AZURE_STORAGE_CONNECTION_STRING (its account key; its endpoint unless
//     the URL has one),
//   - AZURE_STORAGE_ACCOUNT with AZURE_STORAGE_KEY (a shared key),
//   - DefaultAzureCredential (environment, workload or managed identity,
//     az CLI), for the account in ?endpoint= or AZURE_STORAGE_ACCOUNT.
//
// Without ?endpoint= the service is https://ACCOUNT.blob.core.windows.net.
// No error text includes a key or a connection string.
func (o *Opener) openAzure(ctx context.Context, u *url.URL, q url.Values) (Store, error) {
	c, err := parseAzure(u, q)
	if err != nil {
		return nil, err
	}
	opts := &container.ClientOptions{ClientOptions: azcore.ClientOptions{
		Transport: newStoreHTTPClient(),
		// The SDK's defaults retry for minutes (delays up to 60 s): see
		// storeMaxAttempts.
		Retry: policy.RetryOptions{
			MaxRetries:    storeMaxAttempts - 1,
			RetryDelay:    storeRetryDelay,
			MaxRetryDelay: storeMaxRetryDelay,
		},
	}}
	client, err := newAzureClient(c, opts)
	if err != nil {
		return nil, fmt.Errorf("open %s: %w", redactURL(u), err)
	}
	b, err := azureblob.OpenBucket(ctx, client, nil)
	if err != nil {
		return nil, fmt.Errorf("open %s: %w", redactURL(u), err)
	}
	return newBucketStore(b, c.prefix, "azblob", true), nil
}

// newAzureClient makes the container client of c with the credentials from
// the environment (see openAzure).
func newAzureClient(c azureConfig, opts *container.ClientOptions) (*container.Client, error) {
	account := os.Getenv(envAzureAccount)
	if cs := os.Getenv(envAzureConnectionString); cs != "" {
		if c.endpoint == "" {
			client, err := container.NewClientFromConnectionString(cs, c.container, opts)
			if err != nil {
				// The SDK's parse errors do not quote the string.
				return nil, fmt.Errorf("use %s: %w", envAzureConnectionString, err)
			}
			return client, nil
		}
		name, key := connectionStringAccount(cs)
		if name == "" || key == "" {
			return nil, fmt.Errorf("use %s with ?endpoint=: it has no AccountName and AccountKey", envAzureConnectionString)
		}
		return sharedKeyClient(c, name, key, opts)
	}
	if key := os.Getenv(envAzureKey); key != "" {
		if account == "" {
			return nil, fmt.Errorf("%s is set but %s is not", envAzureKey, envAzureAccount)
		}
		return sharedKeyClient(c, account, key, opts)
	}
	svc := c.endpoint
	if svc == "" {
		if account == "" {
			return nil, fmt.Errorf("no Azure storage account: set %s, %s, or ?endpoint=https://ACCOUNT.blob.core.windows.net", envAzureAccount, envAzureConnectionString)
		}
		svc = "https://" + account + ".blob.core.windows.net"
	}
	cred, err := azidentity.NewDefaultAzureCredential(nil)
	if err != nil {
		return nil, fmt.Errorf("make DefaultAzureCredential: %w", err)
	}
	client, err := container.NewClient(svc+"/"+c.container, cred, opts)
	if err != nil {
		return nil, fmt.Errorf("make Azure container client: %w", err)
	}
	return client, nil
}

// sharedKeyClient makes a container client signing with an account key.
func sharedKeyClient(c azureConfig, account, key string, opts *container.ClientOptions) (*container.Client, error) {
	cred, err := container.NewSharedKeyCredential(account, key)
	if err != nil {
		// Its only error is a key that is not base64; say so without it.
		return nil, fmt.Errorf("use the account key of %q: not valid base64", account)
	}
	svc := c.endpoint
	if svc == "" {
		svc = "https://" + account + ".blob.core.windows.net"
	}
	client, err := container.NewClientWithSharedKeyCredential(svc+"/"+c.container, cred, opts)
	if err != nil {
		return nil, fmt.Errorf("make Azure container client: %w", err)
	}
	return client, nil
}

// connectionStringAccount returns the AccountName and AccountKey of an
// Azure connection string ("Key=Value;..."; a key's base64 may hold '=').
func connectionStringAccount(cs string) (name, key string) {
	for part := range strings.SplitSeq(cs, ";") {
		k, v, _ := strings.Cut(part, "=")
		switch strings.TrimSpace(k) {
		case "AccountName":
			name = v
		case "AccountKey":
			key = v
		}
	}
	return name, key
}
