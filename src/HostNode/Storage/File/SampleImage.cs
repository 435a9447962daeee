using LiveMigration.HostNode.Processes;
using LiveMigration.Shared.Model;

namespace LiveMigration.HostNode.Storage.File;

/// <summary>The layout of a sample disk: how big it is and how much data each layer holds.</summary>
public sealed record SampleImageLayout(long Capacity, long BaseData, long MiddleData, long LeafData)
{
    public static readonly SampleImageLayout Small = new(64L << 20, 8L << 20, 4L << 20, 4L << 20);
}

/// <summary>
/// Makes a VM disk with history on a file domain: a raw base and two qcow2 layers, each with data of
/// its own (a distinct byte pattern, partly over what lies below, with sparse gaps between), so a copy
/// that loses a layer, a zeroed range or sparseness shows. Used by the demo and the end-to-end tests.
/// </summary>
public static class SampleImage
{
    public static async Task<(ImageId Image, IReadOnlyList<VolumeId> Volumes)> CreateThreeVolumeChainAsync(
        FileStorageDomain domain, SampleImageLayout layout, CancellationToken ct = default)
    {
        var image = ImageId.New();
        VolumeId baseId = VolumeId.New(), middleId = VolumeId.New(), leafId = VolumeId.New();

        await domain.CreateVolumeAsync(new NewVolume(image, baseId, VolumeFormat.Raw, layout.Capacity), null, ct);
        // The base's data in two runs with a hole between, so it stays sparse.
        await WritePatternAsync(domain.Locate(image, baseId), VolumeFormat.Raw, 0, layout.BaseData / 2, 0x11, ct);
        await WritePatternAsync(domain.Locate(image, baseId), VolumeFormat.Raw, layout.Capacity / 2, layout.BaseData / 2, 0x12, ct);

        await domain.CreateVolumeAsync(new NewVolume(image, middleId, VolumeFormat.Cow, layout.Capacity, new VolumeRef(domain.Id, baseId)), null, ct);
        // Overlaps the end of the base's first run, and zeroes a range of the second that the copy must keep hidden.
        await WritePatternAsync(domain.Locate(image, middleId), VolumeFormat.Cow, layout.BaseData / 4, layout.MiddleData, 0x22, ct);
        await WritePatternAsync(domain.Locate(image, middleId), VolumeFormat.Cow, layout.Capacity / 2, 64 << 10, null, ct);

        await domain.CreateVolumeAsync(new NewVolume(image, leafId, VolumeFormat.Cow, layout.Capacity, new VolumeRef(domain.Id, middleId)), null, ct);
        await WritePatternAsync(domain.Locate(image, leafId), VolumeFormat.Cow, layout.Capacity / 4, layout.LeafData, 0x33, ct);

        return (image, [baseId, middleId, leafId]);
    }

    /// <summary>Writes a byte pattern (zeroes when null) into a volume through its chain with qemu-io, as a guest would.</summary>
    public static Task WritePatternAsync(string path, VolumeFormat format, long offset, long length, int? pattern, CancellationToken ct = default) =>
        ProcessRunner.RunCheckedAsync("qemu-io",
            ["-f", format == VolumeFormat.Raw ? "raw" : "qcow2",
             "-c", pattern is { } p ? $"write -P 0x{p:x2} {offset} {length}" : $"write -z {offset} {length}", path],
            ErrorCodes.IoError, ct);
}
