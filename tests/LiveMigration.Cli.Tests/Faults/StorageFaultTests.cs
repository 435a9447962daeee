using System.Diagnostics;
using System.Text.Json;
using LiveMigration.Cli.Local;

namespace LiveMigration.Cli.Tests.Faults;

/// <summary>
/// Storage faults of the fault matrix (issue "The fault matrix"), in the quick set: the destination domain on a small
/// file system of its own (a size-limited tmpfs the test mounts and unmounts) filling up mid-copy, and an internal
/// volume of the source chain becoming unreadable mid-copy. Each with a writing guest, both strategies, followed to its
/// end as an operator would (a suspension: repair the storage, resume once, abandon if it suspends again), then checked
/// from the outside (DESIGN §7) and reported like the crash cases.
/// The SPM's copies are unthrottled and take well under a second here, so a fault injected "while the copy runs" mostly
/// lands after it (tried: the whole pre-copy took 2 s). The fault lands at the copy step instead: the crash plan stops
/// the Coordinator as it is about to send the internal copy (the mirror already runs in pre-copy; the guest already
/// writes on the destination in post-copy), the test breaks the storage, and starts the Coordinator again, which
/// re-sends the copy into the fault.
/// </summary>
[Collection(LocalClusters.Name)]
public sealed class StorageFaultTests : IAsyncLifetime
{
    private readonly LocalClusterSession _cluster = new();
    private string? _mount;
    /// <summary>The folder bind-mounted at <see cref="_mount"/> (the source-unmounted case): its data outlives the unmount.</summary>
    private string? _exported;

    public Task InitializeAsync() => Task.CompletedTask;

    public async Task DisposeAsync()
    {
        await _cluster.DisposeAsync(); // QEMU and the nodes first: they hold files on the mount
        if (_mount is null) return;
        if (await RunAsync("umount", _mount) != 0) await RunAsync("umount", "-l", _mount);
        Directory.Delete(_mount, recursive: _exported is not null); // a bind mount's bare mount point holds nothing
        if (_exported is not null) Directory.Delete(_exported, recursive: true);
    }

    /// <summary>
    /// The source domain's mount goes just before the source is deleted (a lost NFS mount): the domain reads as
    /// unreachable, not as empty. Before, the delete found "no image" there, called itself done and wrote its mark into
    /// the bare mount point; the image came back with the mount, never deleted. Now the delete fails IO_ERROR until the
    /// migration suspends, nothing is written into the bare mount point, and once the storage is back (mounted again) the
    /// operator resumes and the source is deleted. Post-copy, the guest writing on.
    /// </summary>
    [Fact]
    public async Task The_source_domain_unmounted_before_its_delete_suspends_writes_nothing_there_and_deletes_once_it_is_back()
    {
        var clock = Stopwatch.StartNew();
        const string strategy = "post-copy", step = "DeleteSourceImage";
        var name = Guid.NewGuid().ToString("N")[..8];
        _exported = Path.Combine("/tmp", $"lsm-export-{name}");
        _mount = Path.Combine("/tmp", $"lsm-nfs-{name}");
        Directory.CreateDirectory(_exported);
        Directory.CreateDirectory(_mount);
        Assert.Equal(0, await RunAsync("mount", "--bind", _exported, _mount));
        var storage = await StartWithWrittenInternalVolumeAsync(destinationPath: null, holdBefore: step, sourcePath: _mount);
        var id = await MigrateAsync(strategy);

        await WaitForCoordinatorToStopAsync(step);
        if (await RunAsync("umount", _mount) != 0) Assert.Equal(0, await RunAsync("umount", "-l", _mount));
        await _cluster.UpAsync();

        var bareWhileSuspended = false;
        var final = await RunToEndRepairingStorageAsync(id, repair: async () =>
        {
            bareWhileSuspended = !Directory.EnumerateFileSystemEntries(_mount).Any();
            Assert.Equal(0, await RunAsync("mount", "--bind", _exported, _mount));
        });
        Assert.True(bareWhileSuspended, $"the migration did not suspend on the unmounted source, or wrote into the bare mount point {_mount}\n{final}");
        var outcome = await FaultCheck.CheckAsync(_cluster, "vm1", final, storage, _cluster.Storage);
        await FaultReport.AppendAsync(outcome.ToReportLine(strategy, "qmp", "storage:source-unmounted", $"{step}/before-send", clock.Elapsed));
        outcome.AssertClean($"source domain unmounted at {step}", () => _cluster.LogTails());
        Assert.True(CopyStepFailed(final, step), $"the migration never met the unmounted source\n{final}");
        Assert.Equal("completed", final.GetProperty("status").GetString());
    }

    /// <summary>
    /// The destination fills (another writer takes its free space, the room the SPM promised the disk included) as the
    /// internal copy is sent. Pre-copy: the mirror runs into it too, and the copy is undone before the pivot. Post-copy:
    /// past the point of no return, the guest's writes on the destination leaf and the copy meet ENOSPC; the migration
    /// suspends, the operator frees the space and resumes.
    /// </summary>
    /// <summary>The quick set (CI) runs post-copy, whose fresh space check before the point of no return matters most; the full matrix both.</summary>
    public static TheoryData<string> DestinationFullStrategies => FullFaultMatrixTests.FullMode ? new() { "pre-copy", "post-copy" } : new() { "post-copy" };

    /// <summary>The full matrix only (the quick set keeps CI short; the destination-full case covers a failed copy there).</summary>
    public static TheoryData<string> SourceUnreadableStrategies => FullFaultMatrixTests.FullMode ? new() { "pre-copy", "post-copy" } : new() { "off" };

    [Theory]
    [MemberData(nameof(DestinationFullStrategies))]
    public async Task The_destination_filling_mid_copy_loses_no_durable_write_and_leaves_no_volume(string strategy)
    {
        var clock = Stopwatch.StartNew();
        _mount = Path.Combine("/tmp", $"lsm-full-{Guid.NewGuid().ToString("N")[..8]}");
        Directory.CreateDirectory(_mount);
        Assert.Equal(0, await RunAsync("mount", "-t", "tmpfs", "-o", "size=320m", "tmpfs", _mount));
        var copyStep = CopyStepOf(strategy);
        var storage = await StartWithWrittenInternalVolumeAsync(destinationPath: _mount, holdBefore: copyStep);
        var id = await MigrateAsync(strategy);

        await WaitForCoordinatorToStopAsync(copyStep);
        var filler = Path.Combine(_mount, "filler");
        var filled = FillUp(filler);
        await _cluster.UpAsync();

        var final = await RunToEndRepairingStorageAsync(id, repair: () =>
        {
            File.Delete(filler);
            return Task.CompletedTask;
        });
        if (File.Exists(filler)) File.Delete(filler);
        var outcome = await FaultCheck.CheckAsync(_cluster, "vm1", final, storage, _mount);
        await FaultReport.AppendAsync(outcome.ToReportLine(strategy, "qmp", "storage:destination-full", $"{copyStep}/before-send", clock.Elapsed));
        outcome.AssertClean($"destination full at {copyStep} (filled {filled} bytes)", () => _cluster.LogTails());
        Assert.True(CopyStepFailed(final, copyStep), $"the migration never met the full destination (filled {filled} bytes)\n{final}");
    }

    /// <summary>
    /// An internal volume of the source chain becomes unreadable: its qcow2 header is overwritten on disk. The running
    /// QEMU keeps its parsed header and L1 table in memory (the L2 tables and data it reads are untouched), so the guest
    /// runs, reads and writes on; any fresh open (the SPM's copy, <c>qemu-img</c>) fails. The header comes back (the
    /// storage is repaired) when the migration suspends on it, as an operator repairs storage before resuming, and at
    /// the latest before the check, which may restart the VM.
    /// </summary>
    [Theory]
    [MemberData(nameof(SourceUnreadableStrategies))]
    public async Task An_unreadable_source_volume_mid_copy_loses_no_durable_write_and_leaves_no_volume(string strategy)
    {
        if (strategy == "off") return; // LSM_FAULTS_FULL=1 (./run.sh faults) runs it: one visible line instead of a skip
        var clock = Stopwatch.StartNew();
        var copyStep = CopyStepOf(strategy);
        var storage = await StartWithWrittenInternalVolumeAsync(destinationPath: null, holdBefore: copyStep);
        var internalVolume = await InternalQcow2VolumeFileAsync(storage);
        var header = new byte[4096];
        await using (var file = File.OpenRead(internalVolume)) await file.ReadExactlyAsync(header);
        var id = await MigrateAsync(strategy);

        await WaitForCoordinatorToStopAsync(copyStep);
        await OverwriteAsync(internalVolume, new byte[header.Length]);
        Assert.True(await RunAsync("qemu-img", "info", "-f", "qcow2", "-U", internalVolume) != 0, "qemu-img still reads the overwritten volume");
        await _cluster.UpAsync();

        var final = await RunToEndRepairingStorageAsync(id, repair: () => OverwriteAsync(internalVolume, header));
        if (File.Exists(internalVolume)) await OverwriteAsync(internalVolume, header); // a completed migration deleted it
        var outcome = await FaultCheck.CheckAsync(_cluster, "vm1", final, storage);
        await FaultReport.AppendAsync(outcome.ToReportLine(strategy, "qmp", "storage:source-unreadable", $"{copyStep}/before-send", clock.Elapsed));
        outcome.AssertClean($"source volume unreadable at {copyStep}", () => _cluster.LogTails());
        Assert.True(CopyStepFailed(final, copyStep), $"the migration never met the unreadable volume\n{final}");
    }

    /// <summary>
    /// A post-copy whose clone meets an unreadable source volume suspends past its point of no return; the operator abandons
    /// it: the disk runs on a chain over both domains (its new leaf on sdB, the older layers on sdA), nothing lost, and every
    /// other move of it is refused CHAIN_SPANS_DOMAINS. Once the storage is repaired, the move the refusal names (a post-copy
    /// to the leaf's domain) takes over what the abandoned one left there and makes the chain whole on sdB: no write lost,
    /// nothing left on sdA, no ILLEGAL volume, and the disk moves as any other afterwards.
    /// </summary>
    [Fact]
    public async Task A_chain_an_abandoned_post_copy_left_over_two_domains_is_made_whole_by_the_move_the_refusal_names()
    {
        var clock = Stopwatch.StartNew();
        const string copyStep = "CloneInternalVolumes";
        var storage = await StartWithWrittenInternalVolumeAsync(destinationPath: null, holdBefore: copyStep);
        var internalVolume = await InternalQcow2VolumeFileAsync(storage);
        var header = new byte[4096];
        await using (var file = File.OpenRead(internalVolume)) await file.ReadExactlyAsync(header);
        var abandoned = await MigrateAsync("post-copy");
        await WaitForCoordinatorToStopAsync(copyStep);
        await OverwriteAsync(internalVolume, new byte[header.Length]);
        await _cluster.UpAsync();

        var left = await FaultCheck.RunToEndAsync(_cluster, abandoned); // abandoned at its suspension
        Assert.Equal("abandoned", left.GetProperty("status").GetString());
        Assert.True(CopyStepFailed(left, copyStep), $"the migration never met the unreadable volume\n{left}");
        var disk = (await _cluster.Json("vm", "show", "vm1")).GetProperty("disks")[0];
        var image = disk.GetProperty("image").GetString()!;
        var domains = disk.GetProperty("chain").EnumerateArray().Select(l => l.GetProperty("domain").GetString()!).Distinct().ToList();
        Assert.True(domains.Count == 2, $"the abandoned post-copy left the chain on {string.Join(", ", domains)}\n{disk}");
        Assert.Contains(left.GetProperty("leftBehind").EnumerateArray(), l => l.GetProperty("remove").GetString()!.Contains("--strategy post-copy"));
        var listed = await _cluster.Lsm("vms");
        Assert.Contains("split:", listed.Stdout); // `lsm vms` says the disk's chain lies on two domains
        var refused = await _cluster.Lsm("migrate", "vm1", "--to", "sdA");
        Assert.NotEqual(0, refused.ExitCode);
        Assert.Contains("CHAIN_SPANS_DOMAINS", refused.ToString());

        await OverwriteAsync(internalVolume, header); // the storage repaired
        var whole = (await _cluster.Json("migrate", "vm1", "--to", "sdB", "--disk", image, "--strategy", "post-copy")).GetProperty("id").GetString()!;
        var final = await FaultCheck.RunToEndAsync(_cluster, whole);

        var outcome = await FaultCheck.CheckAsync(_cluster, "vm1", final, storage);
        await FaultReport.AppendAsync(outcome.ToReportLine("post-copy", "qmp", "storage:source-unreadable, abandoned, made whole", $"{copyStep}/before-send", clock.Elapsed));
        outcome.AssertClean("a split chain made whole", () => _cluster.LogTails());
        Assert.Equal("completed", final.GetProperty("status").GetString());
        var chain = (await _cluster.Json("vm", "show", "vm1")).GetProperty("disks")[0].GetProperty("chain").EnumerateArray().ToList();
        Assert.Single(chain.Select(l => l.GetProperty("domain").GetString()).Distinct());
        // whole, it moves as any disk
        var back = (await _cluster.Json("migrate", "vm1", "--to", "sdA", "--strategy", "pre-copy")).GetProperty("id").GetString()!;
        Assert.Equal("completed", (await FaultCheck.RunToEndAsync(_cluster, back)).GetProperty("status").GetString());
    }

    /// <summary>Whether an attempt of the step (the copy, or the delete) failed: the fault was met, not slipped past.</summary>
    private static bool CopyStepFailed(JsonElement migration, string copyStep) =>
        migration.GetProperty("disks")[0].GetProperty("timings").EnumerateArray().Any(t =>
            t.GetProperty("step").GetString() == copyStep && t.GetProperty("outcome").GetString() is { } outcome
            && outcome.StartsWith("failed", StringComparison.Ordinal));

    /// <summary>The SPM's copy of the internal volumes: the step the storage faults land on.</summary>
    private static string CopyStepOf(string strategy) => strategy == "pre-copy" ? "SyncInternalVolumes" : "CloneInternalVolumes";

    /// <summary>
    /// A cluster whose Coordinator stops (crash plan) before it sends <paramref name="holdBefore"/>; sdA under the data
    /// directory (or under <paramref name="sourcePath"/>), sdB under <paramref name="destinationPath"/> (or the data directory's); vm1 on host-1 whose disk has an internal
    /// qcow2 volume holding data (written by the guest, then turned internal by a snapshot); the guest writing on.
    /// Returns sdA's folder.
    /// </summary>
    private async Task<string> StartWithWrittenInternalVolumeAsync(string? destinationPath, string holdBefore, string? sourcePath = null)
    {
        _cluster.Environment = new Dictionary<string, string>
        {
            ["LSM_FAULT_PLAN"] = $"coordinator:kill-self@{holdBefore}/before-send",
            ["LSM_ALLOW_FAULTS"] = "1",
        };
        // the tmpfs the test mounted is the hosts' to use as well
        if (destinationPath is not null) _cluster.UpArguments = [.. _cluster.UpArguments, "--storage-root", destinationPath];
        if (sourcePath is not null) _cluster.UpArguments = [.. _cluster.UpArguments, "--storage-root", sourcePath];
        await _cluster.UpAsync();
        var storage = sourcePath ?? _cluster.Storage;
        await _cluster.Ok("domain", "create", "sdA", "--path", storage, "--capacity", "2GiB");
        await _cluster.Ok("domain", "create", "sdB", "--path", destinationPath ?? _cluster.Storage);
        await _cluster.Ok("vm", "create", "vm1", "--host", "host-1", "--disk", "64MiB@sdA:snapshots=1");
        await _cluster.Ok("vm", "io", "vm1", "--rate", "16MiB/s", "--seconds", "2");
        await WaitForGuestIoToEndAsync();
        await _cluster.Ok("vm", "snapshot", "vm1");
        await _cluster.Ok("vm", "io", "vm1", "--rate", "2MiB/s", "--seconds", "30");
        return storage;
    }

    private async Task<string> MigrateAsync(string strategy)
    {
        var started = await _cluster.Json("migrate", "vm1", "--to", "sdB", "--strategy", strategy);
        return started.GetProperty("id").GetString()!;
    }

    private async Task WaitForGuestIoToEndAsync()
    {
        var deadline = DateTime.UtcNow.AddSeconds(30);
        while (DateTime.UtcNow < deadline)
        {
            var status = await _cluster.Json("vm", "io", "vm1", "--status");
            if (status.TryGetProperty("running", out var running) && !running.GetBoolean()) return;
            await Task.Delay(500);
        }
        throw new Xunit.Sdk.XunitException("the guest's first writes did not end within 30 s");
    }

    /// <summary>The file of the disk's newest INTERNAL qcow2 volume (its .meta says VOLTYPE=INTERNAL, FORMAT=COW).</summary>
    private async Task<string> InternalQcow2VolumeFileAsync(string storage)
    {
        var shown = await _cluster.Json("vm", "show", "vm1");
        var chain = shown.GetProperty("disks")[0].GetProperty("chain").EnumerateArray().Select(v => v.GetProperty("volume").GetString()!).ToList();
        foreach (var volume in Enumerable.Reverse(chain))
        {
            var meta = Directory.EnumerateFiles(storage, volume + ".meta", SearchOption.AllDirectories).Single();
            var lines = File.ReadAllLines(meta).Select(l => l.Trim()).ToList();
            if (lines.Contains("VOLTYPE=INTERNAL") && lines.Contains("FORMAT=COW")) return meta[..^".meta".Length];
        }
        throw new Xunit.Sdk.XunitException($"vm1's chain {string.Join(" ", chain)} has no internal qcow2 volume");
    }

    /// <summary>Waits until the crash plan stopped the Coordinator before <paramref name="step"/> was sent.</summary>
    private async Task WaitForCoordinatorToStopAsync(string step)
    {
        var deadline = DateTime.UtcNow.AddSeconds(90);
        while (DateTime.UtcNow < deadline)
        {
            var state = await LocalClusterState.ReadAsync(_cluster.DataDirectory);
            if (state!.Nodes.Any(n => n.Role == "coordinator" && !Directory.Exists($"/proc/{n.Pid}"))) return;
            await Task.Delay(100);
        }
        throw new Xunit.Sdk.XunitException($"the Coordinator did not stop before {step}\n{_cluster.LogTails()}");
    }

    /// <summary>
    /// Follows the migration to its end; on its first suspension the operator repairs the storage
    /// (<paramref name="repair"/>) and resumes; a later suspension is abandoned (<see cref="FaultCheck.RunToEndAsync"/>).
    /// </summary>
    private async Task<JsonElement> RunToEndRepairingStorageAsync(string id, Func<Task> repair)
    {
        var deadline = DateTime.UtcNow.AddMinutes(4);
        while (DateTime.UtcNow < deadline)
        {
            await Task.Delay(500);
            var shown = await _cluster.Lsm("migration", "show", id, "--json");
            if (shown.ExitCode != 0) continue; // the Coordinator is on its way back
            var migration = JsonDocument.Parse(shown.Stdout).RootElement;
            if (migration.GetProperty("finished").GetBoolean()) return migration;
            if (migration.GetProperty("status").GetString()!.StartsWith("suspended", StringComparison.Ordinal))
            {
                await repair();
                await _cluster.Ok("migration", "resume", id);
                return await FaultCheck.RunToEndAsync(_cluster, id);
            }
        }
        throw new Xunit.Sdk.XunitException($"migration {id} did not end in time\n{_cluster.LogTails()}");
    }

    /// <summary>Writes into <paramref name="path"/> until the file system says it is full; returns the bytes written.</summary>
    private static long FillUp(string path)
    {
        long written = 0;
        using var file = new FileStream(path, FileMode.CreateNew, FileAccess.Write, FileShare.None, bufferSize: 0);
        foreach (var chunk in new[] { 1 << 20, 4096 })
        {
            var block = new byte[chunk];
            Array.Fill(block, (byte)0x5a); // not zeros: nothing may keep it sparse
            try
            {
                while (true)
                {
                    file.Write(block);
                    written += chunk;
                }
            }
            catch (IOException)
            {
                // full at this chunk size; the smaller one takes what is left
            }
        }
        return written;
    }

    private static async Task OverwriteAsync(string path, byte[] bytes)
    {
        await using var file = new FileStream(path, FileMode.Open, FileAccess.Write, FileShare.ReadWrite);
        await file.WriteAsync(bytes);
        file.Flush(flushToDisk: true);
    }

    private static async Task<int> RunAsync(string program, params string[] arguments)
    {
        var psi = new ProcessStartInfo(program) { UseShellExecute = false, RedirectStandardOutput = true, RedirectStandardError = true };
        foreach (var a in arguments) psi.ArgumentList.Add(a);
        using var process = Process.Start(psi)!;
        var stdout = process.StandardOutput.ReadToEndAsync();
        var stderr = process.StandardError.ReadToEndAsync();
        await process.WaitForExitAsync();
        await Task.WhenAll(stdout, stderr);
        return process.ExitCode;
    }
}
