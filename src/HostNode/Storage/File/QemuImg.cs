using System.Globalization;
using System.Text.Json.Nodes;
using LiveMigration.HostNode.Processes;
using LiveMigration.Shared.Model;

namespace LiveMigration.HostNode.Storage.File;

/// <summary>One allocated range of a single qcow2 layer, as <c>qemu-img map</c> reports it.</summary>
internal readonly record struct AllocatedRange(long Start, long Length);

/// <summary>The qemu-img invocations the file domain needs, each with an argument list.</summary>
internal static class QemuImg
{
    private const string Program = "qemu-img";

    public static string FormatName(VolumeFormat format) => format == VolumeFormat.Cow ? "qcow2" : "raw";

    /// <summary>
    /// A new volume file. Preallocated: a raw file allocated whole with fallocate (<c>falloc</c>: fast, and the space is
    /// the file's, so no later write fails for want of it), a qcow2 file with its tables allocated (<c>metadata</c>;
    /// qemu-img allows it only without a backing file).
    /// </summary>
    public static Task CreateAsync(string path, VolumeFormat format, long capacity, string? backing, VolumeFormat? backingFormat,
        long? clusterSize, VolumeAllocation allocation, CancellationToken ct)
    {
        var args = new List<string> { "create", "-q", "-f", FormatName(format) };
        if (allocation == VolumeAllocation.Preallocated)
            args.AddRange(["-o", format == VolumeFormat.Cow ? "preallocation=metadata" : "preallocation=falloc"]);
        if (backing is not null)
        {
            // -b/-F rather than -o backing_file=…: -o would need commas in paths doubled.
            args.AddRange(["-b", backing, "-F", FormatName(backingFormat ?? VolumeFormat.Cow)]);
        }
        if (format == VolumeFormat.Cow && clusterSize is { } size)
            args.AddRange(["-o", $"cluster_size={size.ToString(CultureInfo.InvariantCulture)}"]);
        args.Add(path);
        args.Add(capacity.ToString(CultureInfo.InvariantCulture));
        return ProcessRunner.RunCheckedAsync(Program, args, ErrorCodes.QemuImgFailed, ct);
    }

    /// <summary>The cluster size of a qcow2 file, read with -U because a running QEMU may hold it as a backing file.</summary>
    public static async Task<long> ClusterSizeAsync(string path, CancellationToken ct)
    {
        var json = await ProcessRunner.RunCheckedAsync(Program,
            ["info", "-U", "--output=json", "-f", "qcow2", path], ErrorCodes.QemuImgFailed, ct);
        return JsonNode.Parse(json)?["cluster-size"]?.GetValue<long>()
               ?? throw new OperationFailedException(ErrorCodes.QemuImgFailed, $"qemu-img info of {path} reports no cluster-size");
    }

    /// <summary>The backing file a qcow2 header names, and its format; null when it has none.</summary>
    public static async Task<(string Path, VolumeFormat Format)?> BackingFileAsync(string path, CancellationToken ct)
    {
        var json = JsonNode.Parse(await ProcessRunner.RunCheckedAsync(Program,
            ["info", "-U", "--output=json", "-f", "qcow2", path], ErrorCodes.QemuImgFailed, ct));
        if (json?["backing-filename"]?.GetValue<string>() is not { } backing) return null;
        var format = json["backing-filename-format"]?.GetValue<string>() == "raw" ? VolumeFormat.Raw : VolumeFormat.Cow;
        return (backing, format);
    }

    public static Task RebaseUnsafeAsync(string path, string backing, VolumeFormat backingFormat, CancellationToken ct) =>
        ProcessRunner.RunCheckedAsync(Program,
            ["rebase", "-u", "-f", "qcow2", "-b", backing, "-F", FormatName(backingFormat), path], ErrorCodes.QemuImgFailed, ct);

    /// <summary>
    /// A qcow2 layer opened alone: its own clusters only, what is not allocated in it reads as
    /// zeroes instead of the parent's data.
    /// </summary>
    public static string LayerAlone(string path) =>
        "json:" + new JsonObject
        {
            ["driver"] = "qcow2",
            ["file"] = new JsonObject { ["driver"] = "file", ["filename"] = path },
            ["backing"] = null,
        }.ToJsonString();

    /// <summary>The ranges allocated in this single layer (data or zero clusters: both hide the parent), merged.</summary>
    public static async Task<IReadOnlyList<AllocatedRange>> AllocatedRangesOfLayerAsync(string path, CancellationToken ct)
    {
        var json = await ProcessRunner.RunCheckedAsync(Program,
            ["map", "-U", "--output=json", LayerAlone(path)], ErrorCodes.QemuImgFailed, ct);
        var ranges = new List<AllocatedRange>();
        foreach (var entry in JsonNode.Parse(json)?.AsArray() ?? [])
        {
            if (entry is null || entry["present"]?.GetValue<bool>() != true) continue;
            var start = entry["start"]!.GetValue<long>();
            var length = entry["length"]!.GetValue<long>();
            if (ranges.Count > 0 && ranges[^1].Start + ranges[^1].Length == start)
                ranges[^1] = ranges[^1] with { Length = ranges[^1].Length + length };
            else
                ranges.Add(new AllocatedRange(start, length));
        }
        return ranges;
    }

    /// <summary>True when the two images read identically; false when they differ; throws on an error.</summary>
    public static async Task<(bool Same, string Output)> CompareAsync(string first, string? firstFormat, string second, string? secondFormat,
        CancellationToken ct)
    {
        var args = new List<string> { "compare", "-U" };
        if (firstFormat is not null) args.AddRange(["-f", firstFormat]);
        if (secondFormat is not null) args.AddRange(["-F", secondFormat]);
        args.Add(first);
        args.Add(second);
        var result = await ProcessRunner.RunAsync(Program, args, ct);
        // qemu-img compare: 0 identical, 1 different, anything else an error.
        return result.ExitCode switch
        {
            0 => (true, result.StandardOutput.Trim()),
            1 => (false, result.StandardOutput.Trim()),
            _ => throw new OperationFailedException(ErrorCodes.QemuImgFailed,
                $"qemu-img compare {first} {second} failed (exit {result.ExitCode}): {result.StandardError.Trim()}"),
        };
    }

    /// <summary>
    /// Copies one layer into its existing twin. With a parent, -B makes qemu-img skip what the
    /// source layer does not allocate itself (the parent's data), so exactly that layer moves,
    /// zero clusters included; the source is opened with its chain, which is why the parent must
    /// be readable. No -U (force share) on purpose: a running QEMU holds its backing layers
    /// read-only, which qemu-img may share (tried here with QEMU 7.2), but it holds the write lock
    /// on its active layer, and a copy of a layer still being written would be torn; qemu-img's
    /// "Failed to get shared write lock" error refuses exactly that case.
    /// </summary>
    /// <param name="rateLimit">qemu-img's <c>-r</c> in bytes per second (0: none), fixed for this run. It counts every chunk
    /// qemu-img writes, zeroes included, so a raw base (no parent) is copied with <c>--target-is-zero</c>: its holes are then
    /// skipped instead of written as zeroes (measured here: 24 MiB of data in a 96 MiB raw file at -r 12M took 5.9 s
    /// without it, 1.7 s with it). That is sound for every twin: it is created sparse (or preallocated with zeroes), and a
    /// stopped earlier run only wrote the source's own bytes where they are (an internal layer never changes), so every
    /// byte the skip leaves is already zero; and the proof after the copy compares the whole layer anyway.</param>
    public static Task ConvertLayerAsync(string source, string destination, VolumeFormat format, string? parentBacking,
        VolumeFormat? parentFormat, CancellationToken ct, long rateLimit = 0)
    {
        var fmt = FormatName(format);
        var args = new List<string> { "convert", "-n", "-W", "-f", fmt, "-O", fmt };
        if (rateLimit > 0) args.AddRange(["-r", rateLimit.ToString(System.Globalization.CultureInfo.InvariantCulture)]);
        if (format == VolumeFormat.Raw && parentBacking is null) args.Add("--target-is-zero");
        if (parentBacking is not null)
            args.AddRange(["-B", parentBacking, "-F", FormatName(parentFormat ?? VolumeFormat.Cow)]);
        args.Add(source);
        args.Add(destination);
        return ProcessRunner.RunCheckedAsync(Program, args, ErrorCodes.QemuImgFailed, ct);
    }
}
