using System.Diagnostics;
using System.Text.Json;
using System.Text.Json.Nodes;
using LiveMigration.HostNode.Storage.File;
using LiveMigration.Shared.Model;

namespace LiveMigration.Demo.Bench;

/// <summary>
/// <c>./run.sh bench copy-layers</c>: the SPM's copy of a chain's layers on its own, without the cluster, the VM or a move's
/// other steps, so its cost can be set beside the yardstick with little noise: the file domain's
/// <see cref="FileStorageDomain.CopyVolumeDataAsync"/> of each layer in turn (qemu-img convert, the write-out, the proof,
/// the fsync before LEGAL) against <c>qemu-img convert</c> layer by layer into the same file system, with and without its
/// fsync (the faster of two), in rounds, dirty pages written out before each. With <c>--busy</c> a writer beside both (1 MiB sequential writes
/// at 50 MiB/s and an fdatasync every 100 ms, as the copy bench's busy guest) on the same file system. Writes
/// var/bench/copy-layers.json.
/// </summary>
internal static class LayerCopyBench
{
    private const long MiB = 1 << 20;
    private const long GiB = 1 << 30;

    public static async Task<int> RunAsync(string[] args)
    {
        var rounds = 3;
        var busy = false;
        var dataDir = "/tmp/lsm-bench-layers";
        var dataBytes = 2 * GiB;
        for (var i = 0; i < args.Length; i++)
        {
            string Value() => i + 1 < args.Length ? args[++i] : throw new ArgumentException($"{args[i]} needs a value");
            switch (args[i])
            {
                case "--rounds" when int.TryParse(Value(), out var n) && n is >= 1 and <= 20: rounds = n; break;
                case "--busy": busy = true; break;
                case "--data-dir": dataDir = Value(); break;
                case "--data-mib" when long.TryParse(Value(), out var mib) && mib is >= 64 and <= 65536 && mib % 64 == 0: dataBytes = mib * MiB; break;
                default:
                    Console.Error.WriteLine($"bench copy-layers: unknown or invalid option {args[i]}");
                    Console.Error.WriteLine("usage: ./run.sh bench copy-layers [--rounds N (1-20, default 3)] [--busy] [--data-mib N (a multiple of 64, default 2048)] [--data-dir DIR]");
                    return 2;
            }
        }
        dataDir = Path.GetFullPath(dataDir);
        if (Directory.Exists(dataDir)) Directory.Delete(dataDir, recursive: true);
        Directory.CreateDirectory(dataDir);
        try
        {
            var a = await FileStorageDomain.CreateAsync(dataDir, DomainId.New(), "domain-a", 16 * GiB);
            var image = await CopyBench.BigChainAsync(a, dataDir, dataBytes);
            var chain = await new HostNode.Storage.StoragePool([a]).ResolveChainAsync(a.Id, image);
            var layers = chain.Layers.Select(l => l.Volume.Volume).ToList();
            Console.WriteLine($"bench copy-layers: {rounds} rounds, a chain of {layers.Count} layers with {dataBytes / MiB} MiB of random data{(busy ? ", a writer beside each copy" : "")}");
            Console.WriteLine("round  qemu-img   qemu-img fsynced   domain copy (× qemu-img; × fsynced)   writer's fdatasync p50 / max");

            var results = new List<JsonObject>();
            for (var round = 1; round <= rounds; round++)
            {
                var b = await FileStorageDomain.CreateAsync(dataDir, DomainId.New(), $"domain-b{round}", 16 * GiB);
                // the faster of two, as the copy bench: the first copies of a fresh chain here took 2.6-4.8 s where the next took 0.6 s
                var yardstick = (Took: TimeSpan.MaxValue, Durable: TimeSpan.MaxValue);
                for (var attempt = 0; attempt < 2; attempt++)
                {
                    await CopyBench.SettleAsync();
                    await using var writer = busy ? BusyWriter.Start(Path.Combine(b.DomainPath, "writer.img")) : null;
                    var run = await CopyBench.QemuImgLayerByLayerAsync(chain, b);
                    if (run.Took < yardstick.Took) yardstick = run;
                }

                await b.CloneImageStructureAsync(a, image, new VolumeOwner(MigrationId.New(), VolumeOwner.Unfenced));
                await CopyBench.SettleAsync();
                TimeSpan copy;
                BusyWriter.Flushes? flushes = null;
                await using (var writer = busy ? BusyWriter.Start(Path.Combine(b.DomainPath, "writer.img")) : null)
                {
                    var clock = Stopwatch.StartNew();
                    // with a progress listener, as the SPM copies (it follows the copy from the twin and the convert's writes)
                    foreach (var layer in layers) await b.CopyVolumeDataAsync(a, image, layer, new Progress<CopyProgress>(_ => { }));
                    copy = clock.Elapsed;
                    flushes = writer is null ? null : await writer.StopAsync();
                }
                Directory.Delete(b.DomainPath, recursive: true);

                Console.WriteLine($"{round,5}  {yardstick.Took.TotalSeconds,6:0.00} s  {yardstick.Durable.TotalSeconds,12:0.00} s  " +
                                  $"{copy.TotalSeconds,15:0.00} s ({copy / yardstick.Took:0.00}×; {copy / yardstick.Durable:0.00}×)" +
                                  (flushes is { } f ? $"   {f.P50Ms,14:0.0} / {f.MaxMs:0.0} ms" : ""));
                results.Add(new JsonObject
                {
                    ["round"] = round,
                    ["qemuImgSeconds"] = Math.Round(yardstick.Took.TotalSeconds, 3),
                    ["qemuImgFsyncedSeconds"] = Math.Round(yardstick.Durable.TotalSeconds, 3),
                    ["domainCopySeconds"] = Math.Round(copy.TotalSeconds, 3),
                    ["ratio"] = Math.Round(copy / yardstick.Took, 3),
                    ["fsyncedRatio"] = Math.Round(copy / yardstick.Durable, 3),
                    ["writerFdatasyncP50Ms"] = flushes?.P50Ms,
                    ["writerFdatasyncMaxMs"] = flushes?.MaxMs,
                });
            }

            var report = new JsonObject
            {
                ["benchmark"] = "copy-layers",
                ["at"] = DateTime.UtcNow.ToString("O"),
                ["commit"] = await CopyBench.CommitAsync(),
                ["machine"] = new JsonObject { ["cores"] = Environment.ProcessorCount, ["os"] = Environment.OSVersion.ToString() },
                ["chainBytes"] = dataBytes,
                ["busyWriter"] = busy,
                ["rounds"] = new JsonArray(results.Select(r => (JsonNode)r).ToArray()),
            };
            Directory.CreateDirectory(Path.Combine("var", "bench"));
            var path = Path.Combine("var", "bench", "copy-layers.json");
            await File.WriteAllTextAsync(path, report.ToJsonString(new JsonSerializerOptions { WriteIndented = true }));
            Console.WriteLine($"report: {path}");
            return 0;
        }
        finally
        {
            Directory.Delete(dataDir, recursive: true);
        }
    }

    /// <summary>A writer on the file system under test: 1 MiB sequential writes at 50 MiB/s over 512 MiB, an fdatasync every 100 ms.</summary>
    private sealed class BusyWriter : IAsyncDisposable
    {
        public sealed record Flushes(double P50Ms, double MaxMs);

        private readonly CancellationTokenSource _stop = new();
        private readonly List<double> _fdatasyncMs = [];
        private Task _running = Task.CompletedTask;

        public static BusyWriter Start(string path)
        {
            var writer = new BusyWriter();
            writer._running = Task.Run(() => writer.WriteAsync(path));
            return writer;
        }

        private async Task WriteAsync(string path)
        {
            await using var file = new FileStream(path, FileMode.Create, FileAccess.Write, FileShare.ReadWrite);
            var chunk = new byte[MiB];
            Random.Shared.NextBytes(chunk);
            var clock = Stopwatch.StartNew();
            long written = 0;
            var nextFlush = TimeSpan.FromMilliseconds(100);
            while (!_stop.IsCancellationRequested)
            {
                if (written < clock.Elapsed.TotalSeconds * 50 * MiB)
                {
                    if (file.Position >= 512 * MiB) file.Position = 0;
                    file.Write(chunk);
                    written += chunk.Length;
                }
                else
                {
                    await Task.Delay(2);
                }
                if (clock.Elapsed < nextFlush) continue;
                var flushStarted = clock.Elapsed;
                file.Flush(flushToDisk: true);
                _fdatasyncMs.Add((clock.Elapsed - flushStarted).TotalMilliseconds);
                nextFlush += TimeSpan.FromMilliseconds(100);
            }
        }

        public async Task<Flushes> StopAsync()
        {
            await _stop.CancelAsync();
            await _running;
            var sorted = _fdatasyncMs.Order().ToList();
            return sorted.Count == 0 ? new Flushes(0, 0) : new Flushes(Math.Round(sorted[sorted.Count / 2], 1), Math.Round(sorted[^1], 1));
        }

        public async ValueTask DisposeAsync()
        {
            await StopAsync();
            _stop.Dispose();
        }
    }
}
