using System.Buffers.Binary;
using LiveMigration.Shared.Model;

namespace LiveMigration.HostNode.Guest;

/// <summary>
/// The header every block the guest workload writes starts with. The rest of the block is filled
/// from (offset, sequence), and the checksum covers header and payload, so a block read back proves
/// by itself which write it came from and that it is whole.
/// </summary>
/// <remarks>
/// Layout (little endian): 0 magic "LSMSTAMP", 8 drive id (16 bytes), 24 offset, 32 sequence,
/// 40 writer timestamp (UTC ticks), 48 block size, 52 reserved (0), 56 checksum (FNV-1a 64 over
/// every byte of the block except the checksum itself), 64 payload.
/// </remarks>
public sealed record BlockStamp(ImageId Drive, long Offset, long Sequence, DateTimeOffset WrittenAt, int BlockSize, ulong Checksum)
{
    public const int HeaderSize = 64;
    public const int MinimumBlockSize = 512;
    public const int DefaultBlockSize = 4096;
    private const ulong Magic = 0x504D4154534D534C; // "LSMSTAMP" read little endian
    private const int ChecksumOffset = 56;

    public override string ToString() => $"seq {Sequence} (checksum {Checksum:x16})";

    /// <summary>Checks a block size the workload and verifier can use: a power of two of at least 512 bytes.</summary>
    public static void ValidateBlockSize(int blockSize)
    {
        if (blockSize < MinimumBlockSize || (blockSize & (blockSize - 1)) != 0)
            throw new OperationFailedException(ErrorCodes.InvalidArgument,
                $"block size must be a power of two of at least {MinimumBlockSize} bytes, got {blockSize}");
    }

    /// <summary>Fills <paramref name="block"/> with the stamped block for this write and returns its stamp.</summary>
    public static BlockStamp Write(Span<byte> block, ImageId drive, long offset, long sequence, DateTimeOffset writtenAt)
    {
        ValidateBlockSize(block.Length);
        BinaryPrimitives.WriteUInt64LittleEndian(block, Magic);
        drive.Value.TryWriteBytes(block[8..24]);
        BinaryPrimitives.WriteInt64LittleEndian(block[24..], offset);
        BinaryPrimitives.WriteInt64LittleEndian(block[32..], sequence);
        BinaryPrimitives.WriteInt64LittleEndian(block[40..], writtenAt.UtcTicks);
        BinaryPrimitives.WriteInt32LittleEndian(block[48..], block.Length);
        BinaryPrimitives.WriteInt32LittleEndian(block[52..], 0);
        FillPayload(block[HeaderSize..], offset, sequence);
        var checksum = ComputeChecksum(block);
        BinaryPrimitives.WriteUInt64LittleEndian(block[ChecksumOffset..], checksum);
        return new BlockStamp(drive, offset, sequence, writtenAt, block.Length, checksum);
    }

    /// <summary>
    /// Reads the stamp a block carries. Returns null with a reason when the block is not a whole
    /// stamped block (no magic, wrong size, checksum or payload that does not match).
    /// </summary>
    public static BlockStamp? TryRead(ReadOnlySpan<byte> block, out string? problem)
    {
        if (block.Length < MinimumBlockSize || BinaryPrimitives.ReadUInt64LittleEndian(block) != Magic)
        {
            problem = $"not a stamped block (first bytes {Convert.ToHexString(block[..Math.Min(8, block.Length)])})";
            return null;
        }
        var drive = new ImageId(new Guid(block[8..24]));
        var offset = BinaryPrimitives.ReadInt64LittleEndian(block[24..]);
        var sequence = BinaryPrimitives.ReadInt64LittleEndian(block[32..]);
        var ticks = BinaryPrimitives.ReadInt64LittleEndian(block[40..]);
        var blockSize = BinaryPrimitives.ReadInt32LittleEndian(block[48..]);
        var stored = BinaryPrimitives.ReadUInt64LittleEndian(block[ChecksumOffset..]);
        if (blockSize != block.Length)
        {
            problem = $"stamp seq {sequence} says block size {blockSize}, read {block.Length} bytes";
            return null;
        }
        var computed = ComputeChecksum(block);
        if (computed != stored)
        {
            problem = $"torn or corrupt block: stamp seq {sequence} stores checksum {stored:x16}, content hashes to {computed:x16}";
            return null;
        }
        if (ticks < DateTimeOffset.MinValue.UtcTicks || ticks > DateTimeOffset.MaxValue.UtcTicks)
        {
            problem = $"stamp seq {sequence} carries an impossible timestamp {ticks}";
            return null;
        }
        problem = null;
        return new BlockStamp(drive, offset, sequence, new DateTimeOffset(ticks, TimeSpan.Zero), blockSize, stored);
    }

    /// <summary>SplitMix64 from (offset, sequence): cheap, deterministic, and different for every write.</summary>
    private static void FillPayload(Span<byte> payload, long offset, long sequence)
    {
        var state = (ulong)offset * 0x9E3779B97F4A7C15UL ^ (ulong)sequence * 0xD1B54A32D192ED03UL;
        for (var i = 0; i + 8 <= payload.Length; i += 8)
        {
            state += 0x9E3779B97F4A7C15UL;
            var z = state;
            z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9UL;
            z = (z ^ (z >> 27)) * 0x94D049BB133111EBUL;
            BinaryPrimitives.WriteUInt64LittleEndian(payload[i..], z ^ (z >> 31));
        }
    }

    /// <summary>FNV-1a 64 over the block with the checksum field skipped.</summary>
    private static ulong ComputeChecksum(ReadOnlySpan<byte> block)
    {
        var hash = 0xCBF29CE484222325UL;
        foreach (var b in block[..ChecksumOffset])
            hash = (hash ^ b) * 0x100000001B3UL;
        foreach (var b in block[(ChecksumOffset + 8)..])
            hash = (hash ^ b) * 0x100000001B3UL;
        return hash;
    }
}
