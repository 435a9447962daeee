using System.Text.Json;
using LiveMigration.Demo.Cluster;

namespace LiveMigration.Cli.Tests;

/// <summary>
/// The operator's path of the issue "Trust: one durable truth of every disk's chain", typed as an operator would:
/// a VM with a plain raw disk and a 3-volume chain moves pre-copy to another domain, post-copy back and post-copy there
/// again while its guest writes, the cluster goes down and up on the same data directory, the VM starts again on the
/// chains its host recorded, every acknowledged write verifies, and it moves once more. Every command must exit 0.
/// </summary>
[Collection(LocalClusters.Name)]
public sealed class OperatorRoundTripTests : IAsyncLifetime
{
    private readonly LocalClusterSession _cluster = new();

    public Task InitializeAsync() => Task.CompletedTask;
    public async Task DisposeAsync() => await _cluster.DisposeAsync();

    private Task UpAsync() => _cluster.UpAsync();
    private Task<CliResult> Ok(params string[] arguments) => _cluster.Ok(arguments);
    private Task<JsonElement> VmAsync() => _cluster.Json("vm", "show", "vm1");

    private async Task<string[]> DiskDomainsAsync() =>
        (await VmAsync()).GetProperty("disks").EnumerateArray().Select(d => d.GetProperty("domain").GetString()!).Order().ToArray();

    private async Task<string> DomainIdAsync(string name) =>
        (await _cluster.Json("domains")).GetProperty("domains").EnumerateArray()
            .Single(d => d.GetProperty("name").GetString() == name).GetProperty("id").GetString()!;

    private async Task WriteWhileAsync(Func<Task> move)
    {
        await Ok("vm", "io", "vm1", "--rate", "4MiB/s", "--seconds", "3");
        await move();
        var deadline = DateTime.UtcNow + TimeSpan.FromSeconds(30);
        while ((await _cluster.Json("vm", "io", "vm1", "--status")).GetProperty("running").GetBoolean() && DateTime.UtcNow < deadline)
            await Task.Delay(300);
    }

    [Fact]
    public async Task A_raw_disk_and_a_chain_move_there_and_back_survive_local_down_and_up_start_verify_and_move_again()
    {
        await UpAsync();
        var storage = _cluster.Storage;
        await Ok("domain", "create", "sdA", "--path", storage, "--capacity", "2GiB");
        await Ok("domain", "create", "sdB", "--path", storage, "--capacity", "2GiB");
        var (a, b) = (await DomainIdAsync("sdA"), await DomainIdAsync("sdB"));
        // A plain raw disk (one volume, no snapshots) beside a raw base under two qcow2 layers.
        await Ok("vm", "create", "vm1", "--host", "host-1", "--disk", "128MiB@sdA", "--disk", "64MiB@sdA:snapshots=2");

        await WriteWhileAsync(() => Ok("migrate", "vm1", "--to", "sdB", "--wait"));
        Assert.Equal(new[] { b, b }, await DiskDomainsAsync());
        await WriteWhileAsync(() => Ok("migrate", "vm1", "--to", "sdA", "--strategy", "post-copy", "--wait"));
        Assert.Equal(new[] { a, a }, await DiskDomainsAsync());
        await Ok("vm", "verify", "vm1");
        // A second post-copy in a row builds its new leaf over the leaf the first one switched onto the raw base, so
        // that leaf's header must name the base's real format (raw), not the qcow2 QEMU's change-backing-file writes.
        await WriteWhileAsync(() => Ok("migrate", "vm1", "--to", "sdB", "--strategy", "post-copy", "--wait"));
        Assert.Equal(new[] { b, b }, await DiskDomainsAsync());
        await Ok("vm", "verify", "vm1");

        await Ok("local", "down", "--data-dir", _cluster.DataDirectory);
        // Up again as an operator types it, without --storage-root: the cluster keeps the roots it was given (it once forgot
        // them, so the hosts attached no domain there and the start failed STALE_RECORD).
        await _cluster.UpAsync(storageRoot: false);
        // The host starts the VM on the chains it recorded at each switch, not on the ones it was created with.
        await Ok("vm", "start", "vm1");
        var vm = await VmAsync();
        Assert.True(vm.GetProperty("running").GetBoolean(), vm.ToString());
        Assert.All(vm.GetProperty("disks").EnumerateArray(), d => Assert.All(d.GetProperty("chain").EnumerateArray(),
            layer => Assert.Equal(b, layer.GetProperty("domain").GetString())));
        await Ok("vm", "verify", "vm1");

        await WriteWhileAsync(() => Ok("migrate", "vm1", "--to", "sdA", "--wait"));
        Assert.Equal(new[] { a, a }, await DiskDomainsAsync());
        await Ok("vm", "verify", "vm1");

        // No volume is left on the domain the disks left.
        await DeletedImageFolders.AwaitUnlinkedAsync(TimeSpan.FromSeconds(30), storage); // a folder still there then is a leftover
        var leftovers = Directory.EnumerateDirectories(Path.Combine(storage, b, "images")).ToList();
        Assert.True(leftovers.Count == 0, $"left on sdB: {string.Join(", ", leftovers)}");
    }
}
