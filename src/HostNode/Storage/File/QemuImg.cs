using System.Globalization;
using System.Text.Json.Nodes;
using LiveMigration.HostNode.Processes;
using LiveMigration.Shared.Model;

namespace LiveMigration.HostNode.Storage.File;

/// <summary>One range of an image, merged from what <c>qemu-img map</c> reports.</summary>
internal readonly record struct AllocatedRange(long Start, long Length);

/// <summary>An image as <c>qemu-img map</c> describes it: its size, the ranges it allocates itself, those holding data.</summary>
internal sealed record ImageMap(long Size, IReadOnlyList<AllocatedRange> Present, IReadOnlyList<AllocatedRange> Data);

/// <summary>The qemu-img invocations the file domain needs, each with an argument list.</summary>
internal static partial class QemuImg
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
    /// A qcow2 layer as the node QEMU opens alone: its own clusters only, what is not allocated in it reads as zeroes
    /// instead of the parent's data.
    /// </summary>
    public static JsonObject LayerAloneNode(string path) => new()
    {
        ["driver"] = "qcow2",
        ["file"] = new JsonObject { ["driver"] = "file", ["filename"] = path },
        ["backing"] = null,
    };

    /// <summary>A whole image of the given format as the node QEMU opens (a qcow2 with the backing its header names).</summary>
    public static JsonObject ImageNode(string path, VolumeFormat format) => new()
    {
        ["driver"] = FormatName(format),
        ["file"] = new JsonObject { ["driver"] = "file", ["filename"] = path },
    };

    /// <summary>
    /// What <c>qemu-img map</c> says of an image: its size (the end of the last range), the ranges it allocates itself
    /// (present: data or zero, which hide a parent) and those holding data, each list merged.
    /// </summary>
    public static async Task<ImageMap> MapAsync(JsonObject node, CancellationToken ct)
    {
        var json = await ProcessRunner.RunCheckedAsync(Program,
            ["map", "-U", "--output=json", "json:" + node.ToJsonString()], ErrorCodes.QemuImgFailed, ct);
        var present = new List<AllocatedRange>();
        var data = new List<AllocatedRange>();
        long size = 0;
        foreach (var entry in JsonNode.Parse(json)?.AsArray() ?? [])
        {
            if (entry is null) continue;
            var start = entry["start"]!.GetValue<long>();
            var length = entry["length"]!.GetValue<long>();
            size = Math.Max(size, start + length);
            if (entry["present"]?.GetValue<bool>() == true) Merge(present, start, length);
            if (entry["data"]?.GetValue<bool>() == true) Merge(data, start, length);
        }
        return new ImageMap(size, present, data);

        static void Merge(List<AllocatedRange> ranges, long start, long length)
        {
            if (ranges.Count > 0 && ranges[^1].Start + ranges[^1].Length == start)
                ranges[^1] = ranges[^1] with { Length = ranges[^1].Length + length };
            else
                ranges.Add(new AllocatedRange(start, length));
        }
    }

    /// <summary>
    /// Whether two images of the same size read identically, compared in slices by qemu-img processes side by side: the
    /// compare is bound by reading both images from the page cache one request at a time (1 GiB measured here: 0.43 s
    /// whole, 0.22 s in two halves). Each slice is the same byte range of both, opened through QEMU's raw driver with an
    /// offset and a size over the image's node; the slices follow each other from 0 to <paramref name="size"/>, so
    /// together they compare every byte, as one compare would. A difference is reported at its offset in the image.
    /// </summary>
    public static async Task<(bool Same, string Output)> CompareInSlicesAsync(JsonObject first, JsonObject second, long size,
        IReadOnlyList<(long Offset, long Length)> slices, CancellationToken ct)
    {
        if (slices.Count == 0 || slices[0].Offset != 0 || slices[^1].Offset + slices[^1].Length != size
            || slices.Zip(slices.Skip(1)).Any(pair => pair.First.Offset + pair.First.Length != pair.Second.Offset || pair.First.Length <= 0))
            throw new ArgumentException($"the slices do not cover the {size} bytes once, in order", nameof(slices));
        string Slice(JsonObject node, (long Offset, long Length) slice) => "json:" + new JsonObject
        {
            ["driver"] = "raw",
            ["offset"] = slice.Offset,
            ["size"] = slice.Length,
            ["file"] = node.DeepClone(),
        }.ToJsonString();
        var results = await Task.WhenAll(slices.Select(slice => CompareAsync(Slice(first, slice), null, Slice(second, slice), null, ct)));
        for (var i = 0; i < slices.Count; i++)
        {
            if (results[i].Same) continue;
            // "Content mismatch at offset N!" counts from the slice's start
            var output = MismatchOffset().Replace(results[i].Output, match =>
                $"offset {long.Parse(match.Groups[1].Value, CultureInfo.InvariantCulture) + slices[i].Offset}");
            return (false, output);
        }
        return (true, results[0].Output);
    }

    [System.Text.RegularExpressions.GeneratedRegex(@"offset (\d+)")]
    private static partial System.Text.RegularExpressions.Regex MismatchOffset();

    /// <summary>
    /// Cuts an image of <paramref name="size"/> bytes into at most <paramref name="count"/> slices holding about the same
    /// amount of <paramref name="data"/> each (real images keep their data together, often at the start), each cut on a
    /// 1 MiB boundary. Slices follow each other from 0 to the size; one slice when the size cannot be cut on sectors.
    /// </summary>
    public static IReadOnlyList<(long Offset, long Length)> Slices(IReadOnlyList<AllocatedRange> data, long size, int count)
    {
        const long Alignment = 1 << 20;
        if (size <= 0) return [];
        var total = data.Sum(r => r.Length);
        var cuts = new List<long> { 0 };
        if (size % 512 == 0 && total > 0)
        {
            long seen = 0;
            var next = 1;
            foreach (var range in data)
            {
                for (; next < count && seen + range.Length >= total * next / count; next++)
                {
                    var at = (range.Start + (total * next / count - seen)) / Alignment * Alignment;
                    if (at > cuts[^1] && at < size) cuts.Add(at);
                }
                seen += range.Length;
            }
        }
        cuts.Add(size);
        return cuts.Zip(cuts.Skip(1), (from, to) => (from, to - from)).ToList();
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
    /// of the virtual disk qemu-img passes, holes included, so a base (no parent, raw or qcow2) is copied with
    /// <c>--target-is-zero</c>: its holes are then skipped instead of paced (measured here: 24 MiB of data in a 96 MiB raw
    /// file at -r 12M took 5.9 s without it, 1.7 s with it; 4 MiB in a 256 MiB qcow2 base at -r 4M 63 s without it, 0.4 s
    /// with it). A layer with a parent skips what it does not allocate through -B. That is sound for every twin: it is
    /// created sparse (or preallocated with zeroes), and a stopped earlier run only wrote the source's own bytes where they
    /// are (an internal layer never changes), so every byte the skip leaves is already zero; and the proof after the copy
    /// compares the whole layer anyway.</param>
    /// <param name="started">Told the convert's process id (its progress is what it wrote, read from <c>/proc</c>).</param>
    public static Task ConvertLayerAsync(string source, string destination, VolumeFormat format, string? parentBacking,
        VolumeFormat? parentFormat, CancellationToken ct, long rateLimit = 0, Action<int>? started = null)
    {
        var fmt = FormatName(format);
        // -m 16: qemu-img's most requests in flight (default 8); a layer a mirror or a random writer filled lies scattered in its
        // file, and reading it takes many small requests (a 512 MiB layer of 8,700 extents: 0.56-0.61 s against 0.64-0.66 s;
        // a sequential one: the same 0.15-0.17 s either way).
        var args = new List<string> { "convert", "-n", "-W", "-m", "16", "-f", fmt, "-O", fmt };
        if (rateLimit > 0) args.AddRange(["-r", rateLimit.ToString(System.Globalization.CultureInfo.InvariantCulture)]);
        if (parentBacking is null) args.Add("--target-is-zero");
        if (parentBacking is not null)
            args.AddRange(["-B", parentBacking, "-F", FormatName(parentFormat ?? VolumeFormat.Cow)]);
        args.Add(source);
        args.Add(destination);
        return ProcessRunner.RunCheckedAsync(Program, args, ErrorCodes.QemuImgFailed, ct, started);
    }
}
