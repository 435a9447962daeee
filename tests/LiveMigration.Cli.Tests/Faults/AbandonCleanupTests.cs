using System.Diagnostics;
using System.Text.Json;

namespace LiveMigration.Cli.Tests.Faults;

/// <summary>
/// Abandon through <c>lsm</c> against real processes (issue 9's operator path "abandon leaves no volume behind, or
/// names what it left"): a process outside the cluster holds the source chain's base volume open (a <c>qemu-io</c>
/// reader, with QEMU's own image locks), so the last step of a pre-copy, DeleteSourceImage, is refused VOLUME_IN_USE
/// until the migration suspends. Abandoned while the reader still holds it, the clean-up is refused the same way and
/// the migration suspends again, deleting nothing; once the reader is gone, resume removes the source chain and the
/// migration ends abandoned with nothing left behind, the VM on its destination chain with every durable write.
/// </summary>
[Collection(LocalClusters.Name)]
public sealed class AbandonCleanupTests : IAsyncLifetime
{
    private readonly LocalClusterSession _cluster = new();
    private Process? _reader;

    public Task InitializeAsync() => Task.CompletedTask;

    public async Task DisposeAsync()
    {
        StopReader();
        await _cluster.DisposeAsync();
    }

    [Fact]
    public async Task An_abandon_refused_by_a_volume_in_use_deletes_nothing_and_a_resume_removes_the_source_once_it_is_free()
    {
        var clock = Stopwatch.StartNew();
        await _cluster.UpAsync();
        var storage = await FaultCheck.CreateDomainsAndVmAsync(_cluster, "host-1");
        var before = await _cluster.Json("vm", "show", "vm1");
        var sourceDomain = before.GetProperty("disks")[0].GetProperty("domain").GetString()!;
        var baseVolume = before.GetProperty("disks")[0].GetProperty("chain")[0].GetProperty("volume").GetString()!;
        var basePath = Directory.EnumerateFiles(storage, baseVolume, SearchOption.AllDirectories).Single();
        StartReader(basePath);

        await _cluster.Ok("vm", "io", "vm1", "--rate", "4MiB/s", "--seconds", "4");
        var id = (await _cluster.Json("migrate", "vm1", "--to", "sdB", "--strategy", "pre-copy")).GetProperty("id").GetString()!;
        var suspended = await AwaitStatusAsync(id, m => Status(m).StartsWith("suspended", StringComparison.Ordinal));
        Assert.Contains("DeleteSourceImage", suspended.GetProperty("status").GetString());
        Assert.Contains("VOLUME_IN_USE", suspended.GetProperty("error").GetString());

        // Abandoned while the reader still has the base open: the clean-up is refused, nothing is deleted, it waits again.
        await _cluster.Ok("migration", "abandon", id);
        var firstAttempts = DeleteSourceAttempts(suspended);
        var again = await AwaitStatusAsync(id, m => Status(m).StartsWith("suspended", StringComparison.Ordinal) && DeleteSourceAttempts(m) > firstAttempts);
        Assert.False(again.GetProperty("finished").GetBoolean());
        Assert.True(File.Exists(basePath), "the source's base volume, open in another process, was deleted");

        StopReader();
        await _cluster.Ok("migration", "resume", id);
        var final = await FaultCheck.RunToEndAsync(_cluster, id);
        Assert.Equal("abandoned", final.GetProperty("status").GetString());
        Assert.Empty(final.GetProperty("leftBehind").EnumerateArray());

        var outcome = await FaultCheck.CheckAsync(_cluster, "vm1", final, storage);
        await FaultReport.AppendAsync(outcome.ToReportLine("pre-copy", "qmp", "storage:source-in-use", "DeleteSourceImage, then abandon + resume", clock.Elapsed));
        Assert.NotEqual(sourceDomain, outcome.VmRunningOn);
        outcome.AssertClean("a source volume held open at DeleteSourceImage, abandoned, freed, resumed", () => _cluster.LogTails());
    }

    private static string Status(JsonElement migration) => migration.GetProperty("status").GetString()!;

    /// <summary>How many attempts of DeleteSourceImage the migration's steps show.</summary>
    private static int DeleteSourceAttempts(JsonElement migration) =>
        migration.GetProperty("disks")[0].GetProperty("timings").EnumerateArray().Count(t => t.GetProperty("step").GetString() == "DeleteSourceImage");

    private async Task<JsonElement> AwaitStatusAsync(string id, Func<JsonElement, bool> wanted)
    {
        var deadline = DateTime.UtcNow + TimeSpan.FromMinutes(3);
        while (DateTime.UtcNow < deadline)
        {
            var shown = await _cluster.Json("migration", "show", id);
            if (wanted(shown)) return shown;
            Assert.False(shown.GetProperty("finished").GetBoolean(), $"migration {id} ended before the expected state: {shown}");
            await Task.Delay(500);
        }
        throw new Xunit.Sdk.XunitException($"migration {id} did not reach the expected state\n{_cluster.LogTails()}");
    }

    /// <summary>A reader of the volume that keeps it open (QEMU's image locks) until stopped: qemu-io waiting for commands.</summary>
    private void StartReader(string path)
    {
        _reader = Process.Start(new ProcessStartInfo("qemu-io", ["-r", path])
        {
            RedirectStandardInput = true, RedirectStandardOutput = true, RedirectStandardError = true,
        })!;
        // qemu-io takes its locks as it opens the image, before it reads a command: its answer to one means they are held.
        _reader.StandardInput.WriteLine("info");
        _reader.StandardInput.Flush();
        var answered = Task.Run(() =>
        {
            while (_reader.StandardOutput.ReadLine() is { } line)
                if (line.Contains("cluster_size", StringComparison.Ordinal) || line.Contains("cluster size", StringComparison.Ordinal)) return true;
            return false;
        });
        if (!answered.Wait(TimeSpan.FromSeconds(15)) || !answered.Result)
        {
            // Only now read its errors: reading them while it runs would wait for it to exit.
            StopReader(out var errors);
            Assert.Fail($"qemu-io did not open {path}: {errors}");
        }
    }

    private void StopReader() => StopReader(out _);

    private void StopReader(out string errors)
    {
        errors = "";
        if (_reader is null) return;
        try
        {
            if (!_reader.HasExited) _reader.Kill(entireProcessTree: true);
            _reader.WaitForExit(5000);
            if (_reader.HasExited) errors = _reader.StandardError.ReadToEnd();
        }
        finally
        {
            _reader.Dispose();
            _reader = null;
        }
    }
}
