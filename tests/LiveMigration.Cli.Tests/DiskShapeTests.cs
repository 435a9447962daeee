using System.Text.Json;
using System.Text.Json.Nodes;
using LiveMigration.Demo.Cluster;
using LiveMigration.HostNode.Processes;
using LiveMigration.Shared.Model;

namespace LiveMigration.Cli.Tests;

/// <summary>
/// Every disk shape moves (issue 9), typed as an operator would, against real processes and QEMU: one VM with four
/// disks made in one request — a sparse raw single volume, a preallocated raw single volume, a qcow2 single volume and
/// a qcow2 base under two snapshots — moves pre-copy A → B, then post-copy B → A and post-copy A → B (two post-copies in
/// a row), on the QMP and on the libvirt adapter, while its guest writes; the pre-copy and the second post-copy move the four disks
/// at once (<c>--parallel-disks 4</c>), the first post-copy one after the other. After each move: every command exited 0, every durable write
/// verifies, each disk keeps its shape (base format and allocation in the metadata and in the base file itself, the
/// preallocated disk still allocated whole) and the domain the disks left holds nothing.
/// </summary>
[Collection(LocalClusters.Name)]
public sealed class DiskShapeTests : IAsyncLifetime
{
    private const long DiskBytes = 64L << 20;
    private readonly LocalClusterSession _cluster = new();
    private LibvirtDaemon? _libvirt;

    /// <summary>The four shapes, by what <c>vm show</c> says of each disk: base format, base allocation, chain length as made.</summary>
    private static readonly (string Base, int Layers)[] Shapes = [("qcow2 sparse", 1), ("qcow2 sparse", 3), ("raw preallocated", 1), ("raw sparse", 1)];

    /// <summary>Each post-copy leaves one more layer: the leaf it made on the destination over the copied chain.</summary>
    private int _postCopies;

    public Task InitializeAsync() => Task.CompletedTask;

    public async Task DisposeAsync()
    {
        await _cluster.DisposeAsync();
        if (_libvirt is not null) await _libvirt.DisposeAsync();
    }

    [Fact]
    public async Task Every_disk_shape_moves_pre_copy_then_post_copy_twice_on_qmp()
    {
        await CreateVmWithEveryShapeAsync();
        await MoveAndCheckAsync("sdB", "pre-copy", parallelDisks: 4);
        await MoveAndCheckAsync("sdA", "post-copy", parallelDisks: 1);
        await MoveAndCheckAsync("sdB", "post-copy", parallelDisks: 4);

        // Stopped, every write is verified from the files, each read in the format its metadata names; then it starts again.
        await _cluster.Ok("vm", "stop", "vm1");
        var offline = await _cluster.Json("vm", "verify", "vm1");
        Assert.True(offline.GetProperty("ok").GetBoolean(), offline.ToString());
        Assert.True(offline.GetProperty("checked").GetInt64() > 0, offline.ToString());
        await _cluster.Ok("vm", "start", "vm1");
        await CheckShapesAsync("sdB", "after stop and start");
    }

    [Fact]
    public async Task Every_disk_shape_moves_pre_copy_then_post_copy_twice_on_libvirt()
    {
        _libvirt = await LibvirtDaemon.EnsureRunningAsync();
        // the stand-in guest writes over the NBD export the libvirt host adds for it
        _cluster.UpArguments = ["--hypervisor", "libvirt", "--libvirt-guest-export"];
        await CreateVmWithEveryShapeAsync();
        await MoveAndCheckAsync("sdB", "pre-copy", parallelDisks: 4);
        await MoveAndCheckAsync("sdA", "post-copy", parallelDisks: 1);
        await MoveAndCheckAsync("sdB", "post-copy", parallelDisks: 4);
    }

    private string Storage => Path.Combine(_cluster.DataDirectory, "storage");

    private async Task CreateVmWithEveryShapeAsync()
    {
        await _cluster.UpAsync();
        await _cluster.Ok("domain", "create", "sdA", "--path", Storage, "--capacity", "2GiB");
        await _cluster.Ok("domain", "create", "sdB", "--path", Storage, "--capacity", "2GiB");
        await _cluster.Ok("vm", "create", "vm1", "--host", "host-1",
            "--disk", "64MiB@sdA",
            "--disk", "64MiB@sdA:preallocated",
            "--disk", "64MiB@sdA:format=qcow2",
            "--disk", "64MiB@sdA:snapshots=2:format=qcow2");
        await CheckShapesAsync("sdA", "after create");
    }

    private async Task MoveAndCheckAsync(string destination, string strategy, int parallelDisks)
    {
        var source = destination == "sdA" ? "sdB" : "sdA";
        await _cluster.Ok("vm", "io", "vm1", "--rate", "4MiB/s", "--seconds", "3");
        var moved = await _cluster.Json("migrate", "vm1", "--to", destination, "--strategy", strategy, "--parallel-disks", parallelDisks.ToString(), "--wait");
        Assert.True(moved.GetProperty("status").GetString() == "completed", moved.ToString());
        // Each disk's steps from its first start to its last end: with all four at once there is a moment when every disk was
        // moving (the saga starts them together); one after the other, each disk starts after the one before it ended.
        var spans = moved.GetProperty("disks").EnumerateArray().Select(d =>
        {
            var timings = d.GetProperty("timings").EnumerateArray().ToList();
            return (Start: timings.Min(t => t.GetProperty("startedAt").GetDateTimeOffset()),
                End: timings.Where(t => t.TryGetProperty("endedAt", out var e) && e.ValueKind == JsonValueKind.String)
                    .Select(t => t.GetProperty("endedAt").GetDateTimeOffset()).DefaultIfEmpty(DateTimeOffset.MaxValue).Max());
        }).OrderBy(s => s.Start).ToList();
        Assert.Equal(4, spans.Count);
        if (parallelDisks == 4)
            Assert.True(spans.Max(s => s.Start) < spans.Min(s => s.End), $"{strategy} with --parallel-disks 4: the disks did not all move at once: {moved}");
        else
            Assert.True(spans.Zip(spans.Skip(1)).All(pair => pair.Item2.Start >= pair.Item1.End), $"{strategy} one disk at a time: two disks overlapped: {moved}");
        var deadline = DateTime.UtcNow + TimeSpan.FromSeconds(30);
        while ((await _cluster.Json("vm", "io", "vm1", "--status")).GetProperty("running").GetBoolean() && DateTime.UtcNow < deadline)
            await Task.Delay(300);
        var verified = await _cluster.Json("vm", "verify", "vm1");
        Assert.True(verified.GetProperty("ok").GetBoolean(), verified.ToString());
        Assert.True(verified.GetProperty("checked").GetInt64() > 0, verified.ToString());
        Assert.Equal(0, verified.GetProperty("lost").GetInt64());

        if (strategy == "post-copy") _postCopies++;
        var what = $"after {strategy} to {destination}";
        await CheckShapesAsync(destination, what);
        var sourceImages = Path.Combine(Storage, await DomainIdAsync(source), "images");
        await DeletedImageFolders.AwaitUnlinkedAsync(TimeSpan.FromSeconds(30), Storage); // a folder still there then is a leftover
        var leftovers = Directory.EnumerateDirectories(sourceImages).ToList();
        Assert.True(leftovers.Count == 0, $"{what}: left on {source}: {string.Join(", ", leftovers)}");
    }

    /// <summary>
    /// Every disk lies wholly on <paramref name="domain"/> with its shape: what the host reports from the metadata, and
    /// what qemu-img finds in the base file; the preallocated raw base takes its whole size on the domain.
    /// </summary>
    private async Task CheckShapesAsync(string domain, string what)
    {
        var domainId = await DomainIdAsync(domain);
        var vm = await _cluster.Json("vm", "show", "vm1");
        var disks = vm.GetProperty("disks").EnumerateArray().ToList();
        Assert.True(vm.GetProperty("running").GetBoolean(), $"{what}: {vm}");
        Assert.True(Shapes.Select(s => $"{s.Base} {s.Layers + _postCopies}").SequenceEqual(disks.Select(Shape).Order(StringComparer.Ordinal)),
            $"{what}: the disks are {string.Join(", ", disks.Select(Shape))}");
        foreach (var disk in disks)
        {
            var chain = disk.GetProperty("chain").EnumerateArray().ToList();
            Assert.All(chain, layer => Assert.Equal(domainId, layer.GetProperty("domain").GetString()));
            var basePath = Path.Combine(Storage, domainId, "images", disk.GetProperty("image").GetString()!, chain[0].GetProperty("volume").GetString()!);
            var info = JsonNode.Parse(await ProcessRunner.RunCheckedAsync("qemu-img", ["info", "-U", "--output=json", basePath], ErrorCodes.QemuImgFailed))!;
            Assert.True(disk.GetProperty("baseFormat").GetString() == info["format"]!.GetValue<string>(), $"{what}: {Shape(disk)} has a base file {info.ToJsonString()}");
            if (disk.GetProperty("baseAllocation").GetString() == "preallocated")
                Assert.True(info["actual-size"]!.GetValue<long>() >= DiskBytes,
                    $"{what}: the preallocated raw base takes {info["actual-size"]} bytes on {domain}, less than its {DiskBytes}: it became sparse");
            else
                Assert.True(info["actual-size"]!.GetValue<long>() < DiskBytes,
                    $"{what}: the sparse {info["format"]} base takes {info["actual-size"]} bytes on {domain}, its whole {DiskBytes}: it lost its holes");
        }
    }

    private static string Shape(JsonElement disk) =>
        $"{disk.GetProperty("baseFormat").GetString()} {disk.GetProperty("baseAllocation").GetString()} {disk.GetProperty("chain").GetArrayLength()}";

    private async Task<string> DomainIdAsync(string name) =>
        (await _cluster.Json("domains")).GetProperty("domains").EnumerateArray()
            .Single(d => d.GetProperty("name").GetString() == name).GetProperty("id").GetString()!;
}
